"""Classical (non-learned) inpainting methods used as reference rows by ``mhtma-eval --method ...``.

* ``telea``: Telea's fast-marching method, ``cv2.inpaint(..., cv2.INPAINT_TELEA)`` (radius 3 px);
* ``navier-stokes``: Bertalmío et al.'s fluid-dynamics method, ``cv2.inpaint(..., cv2.INPAINT_NS)`` (radius 3 px);
* ``biharmonic``: scikit-image's ``skimage.restoration.inpaint_biharmonic`` (per channel).

OpenCV is the optional extra ``mhtma[classical]`` (``pip install opencv-python-headless``); without it the
two OpenCV methods raise ImportError saying so, while ``biharmonic`` (scikit-image, a core dependency)
always works. All methods take and return uint8 ``[H, W, 3]`` images; pixels outside the hole are
copied from the input unchanged.
"""
from __future__ import annotations

import numpy as np

from .pixel_range import to_uint8

CLASSICAL_METHODS = ("telea", "navier-stokes", "biharmonic")
OPENCV_METHODS = ("telea", "navier-stokes")
INPAINT_RADIUS = 3

OPENCV_MISSING = ("the '{method}' method needs OpenCV, which is not installed: pip install "
                  "opencv-python-headless (or pip install 'mhtma[classical]')")


def require_opencv(method: str = "telea"):
    """Import and return ``cv2``, or raise ImportError with the install command."""
    try:
        import cv2
    except ImportError as exc:
        raise ImportError(OPENCV_MISSING.format(method=method)) from exc
    return cv2


def opencv_available() -> bool:
    try:
        require_opencv()
    except ImportError:
        return False
    return True


def classical_inpaint(image: np.ndarray, mask: np.ndarray, method: str) -> np.ndarray:
    """Fill the hole of ``image`` (uint8 [H, W, 3]) where ``mask`` ([H, W], non-zero = hole) -> uint8 [H, W, 3]."""
    if method not in CLASSICAL_METHODS:
        raise ValueError(f"method must be one of {', '.join(CLASSICAL_METHODS)}, got {method!r}")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"image must be a uint8 array [H, W, 3], got "
                        f"{getattr(image, 'dtype', type(image).__name__)} {list(getattr(image, 'shape', []))}")
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {list(mask.shape)} must equal the image's [H, W] = {list(image.shape[:2])}")
    hole = mask > 0.5 if np.issubdtype(mask.dtype, np.floating) else mask > 0
    if not hole.any():
        return image.copy()
    if method in OPENCV_METHODS:
        cv2 = require_opencv(method)
        flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        filled = cv2.inpaint(np.ascontiguousarray(image), hole.astype(np.uint8) * 255, INPAINT_RADIUS, flag)
    else:
        from skimage.restoration import inpaint_biharmonic

        if hole.all():
            raise ValueError("biharmonic inpainting needs at least one known pixel; the mask covers the whole image")
        result = inpaint_biharmonic(image.astype(np.float64) / 255.0, hole, channel_axis=-1)
        filled = to_uint8(result * 255.0)
    out = image.copy()
    out[hole] = filled[hole]
    return out


__all__ = ["CLASSICAL_METHODS", "OPENCV_METHODS", "INPAINT_RADIUS", "require_opencv", "opencv_available",
           "classical_inpaint"]

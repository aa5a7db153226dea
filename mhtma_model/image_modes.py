"""A picture's own mode, kept: the 8-bit RGB the network sees, the prediction written back in the picture's
mode and values, and the file written in that mode (or converted, with one line saying so).

The rules (one home for each):

* **8-bit view** (:func:`to_8bit`, :func:`to_rgb`): one 8-bit step is :func:`value_scale` units of the
  picture's own values: 257 for 16-bit grey (``I;16*``, and ``I`` whose values exceed 255), 1/255 for
  float (``F``) pictures whose values are all <= 1, else 1. An alpha channel (RGBA, LA, PA, or a
  transparency key) is composited on **white** for the RGB view.
* **Kept modes** (:data:`KEPT_MODES`): an inpainted picture keeps these modes; the prediction is written
  into the hole in the picture's own values: grey modes get its luminance (ITU-R 601, as Pillow's
  RGB -> L) times :func:`value_scale`, ``1`` the luminance > 127, ``P`` / ``PA`` the nearest colour of
  the picture's own palette, CMYK / YCbCr / LAB / HSV Pillow's conversion of it; an alpha channel is
  copied, not inpainted. Known pixels are copied, so they are identical in the picture's own values.
  Other modes (premultiplied alpha, ...) are converted to RGB or RGBA first, with a warning.
* **Files** (:func:`save_image`): the format is the file's suffix; the picture is written in its own mode
  when the format holds it (:data:`FORMAT_MODES`), else converted (16-bit grey to 16-bit where the format
  has it, else the 8-bit view: grey to ``L``, alpha to ``RGBA``, the rest to ``RGB``) and
  :func:`save_image` returns the one line saying so. EXIF (orientation reset to 1 by
  :func:`mhtma_model.images.open_image` once it is applied) and the ICC profile are written where the
  format has them; WebP is written lossless (known pixels stay identical). 16-bit colour pictures
  (:mod:`mhtma_model.deep_colour`) keep their 16 bits in PNG (the hole gets the prediction times 257),
  other formats get their 8-bit picture, with the one line.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from . import deep_colour
from .output_files import write_atomic
from .pixel_range import to_uint8

#: Modes an inpainted picture keeps (module docstring).
KEPT_MODES = ("1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F", "P", "PA", "RGB", "RGBA", "CMYK",
              "YCbCr", "LAB", "HSV")
#: Single-channel modes deeper than 8 bits.
DEEP_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
#: Modes each output format writes as they are (others are converted, :func:`writable`).
FORMAT_MODES = {
    "PNG": ("1", "L", "LA", "I;16", "I;16L", "I;16B", "P", "RGB", "RGBA"),
    "TIFF": ("1", "L", "LA", "I;16", "I;16L", "I;16B", "I", "F", "P", "PA", "RGB", "RGBA", "CMYK", "LAB"),
    "JPEG": ("L", "RGB", "CMYK"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB"),
}
#: Lossy formats: writing one changes the known pixels too, so :func:`save_image` says so.
LOSSY_FORMATS = ("JPEG",)
#: What a converted picture keeps of its ``info``.
_KEPT_INFO = ("exif", "icc_profile", "dpi")
#: Formats that carry EXIF and ICC profiles.
METADATA_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def has_transparency(img: Image.Image) -> bool:
    """True for modes with an alpha channel and palette pictures with a transparent colour."""
    return img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)


def value_scale(image: Image.Image) -> float:
    """How many units of ``image``'s own values one 8-bit step is (module docstring, "8-bit view")."""
    if image.mode.startswith("I;16"):
        return 257.0
    if image.mode == "I":
        return 257.0 if np.asarray(image).max(initial=0) > 255 else 1.0
    if image.mode == "F":
        values = np.asarray(image)
        finite = values[np.isfinite(values)]
        return 1.0 / 255.0 if finite.size and finite.max() <= 1.0 else 1.0
    return 1.0


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit (``I;16*``, ``I``) and float (``F``) single-channel pictures -> 8-bit ``L``; others unchanged."""
    if image.mode not in DEEP_GREY:
        return image
    values = np.asarray(image).astype(np.float64) / value_scale(image)
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(to_uint8(values))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any picture -> its 8-bit RGB view, alpha composited on white (module docstring)."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if has_transparency(image) or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return to_8bit(image).convert("RGB")


def network_rgb(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3]: what the network sees of ``image`` (its 8-bit colours; alpha dropped, not flattened)."""
    image = to_8bit(image)
    if has_transparency(image):
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def kept(image: Image.Image) -> Image.Image:
    """``image`` in the mode its inpainted copy has: itself for :data:`KEPT_MODES`, else RGB/RGBA (warned)."""
    if image.mode in KEPT_MODES:
        return image
    target = "RGBA" if has_transparency(image) else "RGB"
    warnings.warn(f"{image.mode} pictures are inpainted as {target}", stacklevel=3)
    return image.convert(target)


# ------------------------------------------------------------------------------ the prediction in the mode
def _colour_channels(image: Image.Image) -> slice | None:
    """Which channels of ``np.asarray(image)`` hold colour (None: the picture is single-channel)."""
    if image.mode in ("LA", "PA"):
        return slice(0, 1)
    if image.mode == "RGBA":
        return slice(0, 3)
    return None if len(image.getbands()) == 1 else slice(None)


def _palette_entries(source: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """A palette picture's entries -> (RGB uint8 [n, 3], alpha uint8 [n]: its palette's alpha or
    transparency, 255 where it has none)."""
    channels = len(source.palette.mode)
    entries = np.frombuffer(source.palette.tobytes(), np.uint8).reshape(-1, channels)
    alpha = entries[:, 3].copy() if channels == 4 else np.full(len(entries), 255, np.uint8)
    key = source.info.get("transparency")
    if isinstance(key, int) and key < len(alpha):
        alpha[key] = 0
    elif isinstance(key, bytes):
        alpha[:len(key)] = np.frombuffer(key, np.uint8)[:len(alpha)]
    return entries[:, :3], alpha


def _nearest_entries(source: Image.Image, pred_u8: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Indices of ``source``'s palette nearest to the prediction: only opaque entries are used, and pixels
    whose own entry is (partly) transparent keep it, so the picture's transparency does not change."""
    rgb, alpha = _palette_entries(source)
    opaque = np.nonzero(alpha == 255)[0] if source.mode == "P" else np.arange(len(rgb))
    opaque = opaque if len(opaque) else np.arange(len(rgb))
    palette = Image.new("P", (1, 1))
    palette.putpalette(rgb[opaque].tobytes())
    lookup = np.concatenate([opaque, np.full(256 - len(opaque), opaque[0])]).astype(np.uint8)  # padding entries
    index = lookup[np.asarray(Image.fromarray(pred_u8).quantize(palette=palette, dither=Image.Dither.NONE))]
    return np.where(alpha[window] < 255, window, index) if source.mode == "P" else index


def _in_mode(source: Image.Image, pred_u8: np.ndarray, window: np.ndarray) -> np.ndarray:
    """The 8-bit RGB prediction ``[h, w, 3]`` as ``source``'s colour values ([h, w] or [h, w, c]);
    ``window``: ``source``'s values where it goes."""
    pred = Image.fromarray(pred_u8)
    mode = source.mode
    if mode in ("P", "PA"):
        return _nearest_entries(source, pred_u8, window if mode == "P" else window[..., 0])
    if mode in ("RGB", "RGBA") or len(source.getbands()) > 2:
        return np.asarray(pred if mode in ("RGB", "RGBA") else pred.convert(mode))
    grey = np.asarray(pred.convert("L"))
    if mode == "1":
        return grey > 127
    if mode in DEEP_GREY:
        values = np.rint(grey * value_scale(source)) if mode != "F" else grey * value_scale(source)
        return values.astype(np.asarray(source).dtype)
    return grey


def _from_array(source: Image.Image, values: np.ndarray) -> Image.Image:
    """A picture of ``source``'s mode, palette and info holding ``values`` (layout of ``np.asarray``)."""
    if source.mode == "1":
        out = Image.fromarray(values)
    else:
        out = Image.frombytes(source.mode, source.size, np.ascontiguousarray(values).tobytes())
    if source.mode in ("P", "PA"):
        out.putpalette(source.palette.tobytes(), source.palette.mode)
    out.info = dict(source.info)
    return out


def paste_prediction(source: Image.Image, pred_u8: np.ndarray, hole: np.ndarray, box) -> Image.Image:
    """Copy of ``source`` (a :data:`KEPT_MODES` picture) whose ``hole`` pixels inside ``box = (top, bottom,
    left, right)`` hold ``pred_u8`` (uint8 [h, w, 3] for the box) in ``source``'s mode (module docstring)."""
    top, bottom, left, right = box
    out = np.array(source, copy=True)
    window = out[top:bottom, left:right]
    pred = _in_mode(source, pred_u8, window)
    channels = _colour_channels(source)
    if channels is not None and pred.ndim == 2:
        pred = pred[..., None]
    if channels is None:
        window[hole] = pred[hole]
    else:
        window[..., channels][hole] = pred[hole]
    result = _from_array(source, out)
    deep = deep_colour.values_of(source)
    if deep is not None:  # the 16-bit values too: the prediction in 16-bit steps, the rest copied
        deep = deep.copy()
        deep[top:bottom, left:right, :3][hole] = pred_u8[hole].astype(np.uint16) * 257
        result.info[deep_colour.DEEP_COLOUR] = deep
    return result


# ------------------------------------------------------------------------------------------------ files
def format_of(path) -> str:
    """The Pillow format a file name asks for (from its suffix); ValueError naming the file when unknown."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell which image format to write for {Path(path).name}: "
                         "give it a suffix such as .png, .tif, .jpg, .webp or .bmp")
    return fmt


def writable(image: Image.Image, fmt: str) -> tuple[Image.Image, Optional[str]]:
    """``image`` in a mode ``fmt`` writes -> (picture, None) when unchanged, else (converted, the one line
    saying so). Conversion rules: module docstring, "Files"."""
    allowed = FORMAT_MODES.get(fmt)
    if deep_colour.values_of(image) is not None and fmt != "PNG":
        out = image.copy()
        del out.info[deep_colour.DEEP_COLOUR]
        return out, f"{fmt} cannot hold 16-bit {image.mode} pictures here: written as 8-bit {image.mode} (PNG keeps it)"
    if allowed is None or image.mode in allowed:
        return image, None
    if image.mode == "I" and "I;16" in allowed and 0 <= np.asarray(image).min(initial=0) \
            and np.asarray(image).max(initial=0) <= 65535:
        out = Image.fromarray(np.asarray(image).astype(np.uint16))
    elif has_transparency(image) and "RGBA" in allowed:
        out = image.convert("RGBA")
    elif image.mode in DEEP_GREY + ("1", "L", "LA") and "L" in allowed:
        out = to_rgb(image).convert("L")
    else:
        out = to_rgb(image)
    out.info = {key: image.info[key] for key in _KEPT_INFO if key in image.info}
    keeps = [name for name, modes in FORMAT_MODES.items() if image.mode in modes]
    hint = f" ({keeps[0]} keeps it)" if keeps else ""
    return out, f"{fmt} cannot hold {image.mode} pictures: written as {out.mode}{hint}"


def _save_options(image: Image.Image, fmt: str) -> dict:
    options = {}
    if fmt in METADATA_FORMATS:
        options.update({key: image.info[key] for key in ("exif", "icc_profile") if image.info.get(key)})
    if fmt == "WEBP":
        options["lossless"] = True
    if fmt == "JPEG":
        options["quality"] = 95
    if "dpi" in image.info and fmt in ("PNG", "JPEG", "TIFF", "BMP"):
        options["dpi"] = image.info["dpi"]
    return options


def _write(image: Image.Image, fmt: str, fh) -> None:
    """``image`` (already :func:`writable`) into the open binary file ``fh``."""
    if deep_colour.values_of(image) is not None:
        deep_colour.write_png(image, fh)
    else:
        image.save(fh, fmt, **_save_options(image, fmt))


def save_image(image: Image.Image, path, fmt: Optional[str] = None) -> Optional[str]:
    """Write ``image`` to ``path`` atomically (the user's umask applies) in ``fmt`` (default: from the
    suffix) -> None, or the one line saying how it was converted (:func:`writable`) and, for a lossy format,
    that the known pixels changed too."""
    path = Path(path)
    fmt = fmt or format_of(path)
    out, note = writable(image, fmt)
    write_atomic(path, lambda fh: _write(out, fmt, fh))
    if fmt in LOSSY_FORMATS:
        lossy = f"{fmt} is lossy, so the known pixels changed slightly too (.png or .tif keeps them exact)"
        note = f"{note}; {lossy}" if note else lossy
    return note

"""16-bit colour: RGB and RGBA pictures with 16 bits per channel, which Pillow holds in 8 bits.

Such a picture travels as its 8-bit RGB/RGBA Pillow image (the high byte of each value: what Pillow
reads, and what the network sees) carrying its full values, uint16 ``[H, W, 3|4]``, in
``info[DEEP_COLOUR]``. :func:`read_low_bytes` recovers the low bytes of a 16-bit PNG or TIFF (a second
decode of the same file with the byte order swapped, so each channel's other byte lands in the 8-bit
image), :func:`attach` joins them, :func:`from_array` makes such a picture from a uint16 array, and
:func:`write_png` writes it as a 16-bit PNG (the one format here that holds it) with its EXIF and ICC
profile. How inpainting and saving use it: :mod:`mhtma_model.image_modes`.
"""
from __future__ import annotations

import struct
import warnings
import zlib
from typing import BinaryIO, Callable, Optional

import numpy as np
from PIL import Image

#: The ``info`` key of a 16-bit colour picture's full values (uint16 [H, W, 3|4]).
DEEP_COLOUR = "mhtma_rgb16"
_SWAP = {"RGB;16B": "RGB;16L", "RGB;16L": "RGB;16B", "RGBA;16B": "RGBA;16L", "RGBA;16L": "RGBA;16B"}
_SWAP.update({"RGB;16N": "RGB;16B", "RGBA;16N": "RGBA;16B"} if np.little_endian else
             {"RGB;16N": "RGB;16L", "RGBA;16N": "RGBA;16L"})


def _raw_mode(tile) -> Optional[str]:
    args = tile.args
    return args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args else None)


def is_deep(image: Image.Image) -> bool:
    """Whether an opened, not yet decoded picture is 16-bit colour (decoding keeps only its high bytes)."""
    return len(image.tile) > 0 and all(_raw_mode(tile) in _SWAP for tile in image.tile)


def read_low_bytes(source, opened: Image.Image,
                   finish: Callable[[Image.Image], Image.Image]) -> Optional[Image.Image]:
    """The low byte of each value of the 16-bit colour picture ``opened`` (not yet decoded), decoded again
    from ``source`` (the path or file it was opened from) with the byte order swapped, then given to
    ``finish`` (the reader's last step, e.g. its orientation) while the file is open; None, with a
    warning, when that second decode fails."""
    tiles = list(opened.tile)
    try:
        if hasattr(source, "seek"):
            source.seek(0)
        with Image.open(source) as again:
            again.tile = [tile._replace(args=_SWAP[_raw_mode(tile)] if isinstance(tile.args, str)
                                        else (_SWAP[_raw_mode(tile)],) + tuple(tile.args[1:])) for tile in tiles]
            again.load()
            return finish(again)
    except (OSError, ValueError, SyntaxError) as error:  # the 8-bit picture is still good: use it, and say so
        warnings.warn(f"{getattr(source, 'name', source)}: its 16-bit colour is read as 8-bit ({error})", stacklevel=3)
        return None


def attach(high: Image.Image, low: Image.Image) -> Image.Image:
    """``high`` (the 8-bit picture) carrying the 16-bit values of ``high`` and ``low`` bytes; returns it."""
    high.info[DEEP_COLOUR] = (np.asarray(high).astype(np.uint16) << 8) | np.asarray(low)
    return high


def from_array(values: np.ndarray) -> Image.Image:
    """uint16 ``[H, W, 3|4]`` -> a 16-bit colour picture (its high bytes as RGB/RGBA, the values in info)."""
    image = Image.fromarray((values >> 8).astype(np.uint8))
    image.info[DEEP_COLOUR] = np.array(values, dtype=np.uint16)
    return image


def values_of(image: Image.Image) -> Optional[np.ndarray]:
    """The 16-bit values a picture carries (uint16 [H, W, 3|4]), or None for other pictures."""
    deep = image.info.get(DEEP_COLOUR)
    ok = isinstance(deep, np.ndarray) and deep.shape == (image.height, image.width, len(image.getbands()))
    return deep if ok and image.mode in ("RGB", "RGBA") else None


def _chunk(fh: BinaryIO, tag: bytes, data: bytes) -> None:
    fh.write(struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data)))


def write_png(image: Image.Image, fh: BinaryIO) -> None:
    """Write a 16-bit colour picture as a 16-bit PNG (rows unfiltered, zlib), with ``info``'s EXIF and ICC."""
    values = values_of(image)
    height, width, channels = values.shape
    fh.write(b"\x89PNG\r\n\x1a\n")
    _chunk(fh, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2 if channels == 3 else 6, 0, 0, 0))
    if image.info.get("icc_profile"):
        _chunk(fh, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(image.info["icc_profile"]))
    if image.info.get("exif"):
        exif = image.info["exif"]
        _chunk(fh, b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    rows = values.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    rows = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 on every row
    _chunk(fh, b"IDAT", zlib.compress(rows.tobytes(), 6))
    _chunk(fh, b"IEND", b"")

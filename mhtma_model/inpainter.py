""":class:`Inpainter`: a trained generator with its device and precision, the object to reach for first.

    from mhtma_model import Inpainter

    inpainter = Inpainter.from_checkpoint("runs/demo/checkpoints/best.pt")   # device="auto", precision="auto"
    result = inpainter(photo, mask)                 # PIL image: the photo's size and mode, known pixels identical
    results = inpainter.batch([p1, p2], [m1, m2])   # same-size images share one forward
    inpainter.save_pretrained("my-model/")          # config.json + model.safetensors
    inpainter = Inpainter.from_pretrained("my-model/")  # or Inpainter.load(file or folder)

The rules for masks, sketches, sizes and modes are those of :mod:`mhtma_model.inference` (which does the
work); the device and precision are resolved once, when the object is made, and held.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors

from . import deep_colour
from .config import Config, ConfigError, build_generator
from .device import resolve_device
from .output_files import check_output_folder, write_atomic, write_json_atomic
from .images import mask_from_array
from .inference import generator_uses_sketch, inpaint_images, open_generator, prepare_generator

__all__ = ["Inpainter", "CONFIG_NAME", "WEIGHTS_NAME", "PRETRAINED_FORMAT"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The ``format`` entry of a ``config.json`` written by :meth:`Inpainter.save_pretrained`.
PRETRAINED_FORMAT = "mhtma-inpainter"
PRETRAINED_VERSION = 1

ImageLike = Union[Image.Image, np.ndarray]


def _not_a_picture(name: str, value: Any) -> str:
    """The message for an image, mask or sketch of the wrong type; a path gets told how to open it."""
    hint = (f"; open the file first: {name} = mhtma_model.images.open_image(path)"
            if isinstance(value, (str, os.PathLike)) else "")
    return f"{name} must be a PIL image or a numpy array, got {type(value).__name__}{hint}"


def _as_image(value: Any, name: str) -> Optional[Image.Image]:
    """A PIL image, or an array as one: uint8 [H, W], [H, W, 3] or [H, W, 4], uint16 or float32 [H, W]
    (16-bit and float grey), uint16 [H, W, 3|4] (16-bit colour, :mod:`mhtma_model.deep_colour`); a bool
    sketch is True = line."""
    if value is None or isinstance(value, Image.Image):
        return value
    if not isinstance(value, np.ndarray):
        raise TypeError(_not_a_picture(name, value))
    if value.dtype == np.bool_:
        value = value.astype(np.uint8) * 255
    colour = value.dtype in (np.uint8, np.uint16) and value.ndim == 3 and value.shape[2] in (3, 4)
    grey = value.ndim == 2 and value.dtype in (np.uint8, np.uint16, np.float32)
    if not (colour or grey):
        raise TypeError(f"{name} array must be uint8 (or bool) [H, W], [H, W, 3] or [H, W, 4], uint16 [H, W(, 3|4)] "
                        f"or float32 [H, W], got {value.dtype} {list(value.shape)}")
    return deep_colour.from_array(value) if colour and value.dtype == np.uint16 else Image.fromarray(value)


def _as_mask(value: Any) -> Image.Image:
    """A PIL mask as it is; an array by the one rule for array masks, :func:`mhtma_model.images.mask_from_array`
    (bool and 0/1 arrays: 1 = hole; uint8 pictures: > 127 = hole)."""
    if isinstance(value, np.ndarray):
        return Image.fromarray(mask_from_array(value).astype(np.uint8) * 255)
    if not isinstance(value, Image.Image):
        raise TypeError(_not_a_picture("mask", value))
    return value


class Inpainter:
    """A generator ready to inpaint: on one device, at one precision, optionally compiled.

    ``Inpainter(generator, config=None, device="auto", precision="auto", compile=False, max_size=None)``;
    usually made by :meth:`from_checkpoint` or :meth:`from_pretrained`. ``device`` ("auto", "cpu",
    "cuda[:N]") and ``precision`` (:mod:`mhtma_model.precision`) are resolved and checked here, once
    (ValueError, one line). ``max_size``: longest side the network sees (None: the training size).
    Calls are serialised by :attr:`lock` (one forward at a time; safe from several threads).
    Files opened with :func:`mhtma_model.images.open_image` come upright (EXIF orientation applied, the tag
    reset) and, for 16-bit colour, with their 16 bits; ``Image.open`` alone gives neither.
    """

    def __init__(self, generator: torch.nn.Module, config: Optional[Config] = None, device="auto",
                 precision: str = "auto", compile: bool = False, max_size: Optional[int] = None):
        self.device = resolve_device(device)
        self.precision = precision
        self.generator = prepare_generator(generator, self.device, precision, compile)
        self.config = config
        self.max_size = max_size
        self.lock = threading.RLock()

    # ------------------------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device="auto", precision: str = "auto",
                        compile: bool = False, max_size: Optional[int] = None) -> "Inpainter":
        """The generator of a ``mhtma-train`` checkpoint (.pt). ValueError naming the file when it is missing
        or unusable ("checkpoint not found: ...", "cannot use checkpoint ...: why")."""
        generator, config = open_generator(Path(path).expanduser())
        return cls(generator, config, device, precision, compile, max_size)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device="auto", precision: str = "auto", compile: bool = False,
             max_size: Optional[int] = None) -> "Inpainter":
        """:meth:`from_pretrained` for a folder, :meth:`from_checkpoint` otherwise (what ``--checkpoint`` of the
        command lines takes)."""
        folder = Path(path).expanduser()
        make = cls.from_pretrained if folder.is_dir() else cls.from_checkpoint
        return make(folder, device, precision, compile, max_size)

    @classmethod
    def from_pretrained(cls, directory: Union[str, os.PathLike], device="auto", precision: str = "auto",
                        compile: bool = False, max_size: Optional[int] = None) -> "Inpainter":
        """Read what :meth:`save_pretrained` wrote (``config.json`` + ``model.safetensors``); ValueError
        naming the folder when a file is missing or does not fit."""
        folder = Path(directory).expanduser()
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (folder / name).is_file():
                run = folder / "checkpoints" / "best.pt"
                example = run if run.is_file() else "runs/NAME/checkpoints/best.pt"
                raise ValueError(f"{folder} is not a saved Inpainter ({name} is missing); give a folder written by "
                                 f"Inpainter.save_pretrained or a checkpoint file such as {example}")
        try:
            meta = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
            if meta.get("format") != PRETRAINED_FORMAT:
                raise ValueError(f"its format is {meta.get('format')!r}, not {PRETRAINED_FORMAT!r}")
            config = Config.from_dict(meta["config"])
            generator = build_generator(config.model)
            generator.load_state_dict(load_file(str(folder / WEIGHTS_NAME)), strict=True)
        except (ConfigError, ValueError, KeyError, TypeError, RuntimeError, OSError) as exc:
            raise ValueError(f"cannot use {folder}: {' '.join(str(exc).split())[:500]}") from exc
        generator.training_size = config.data.size
        return cls(generator, config, device, precision, compile, max_size)

    def save_pretrained(self, directory: Union[str, os.PathLike]) -> Path:
        """Write ``config.json`` (the run's config) and ``model.safetensors`` (the generator's weights) into
        ``directory`` (made if needed; atomic writes with the umask's mode) -> the folder. ValueError when this
        Inpainter has no config or ``directory`` cannot be written (:class:`mhtma_model.output_files.OutputError`,
        checked before anything is written)."""
        if self.config is None:
            raise ValueError("save_pretrained needs the generator's config: make the Inpainter with "
                             "from_checkpoint/from_pretrained or pass config=")
        folder = check_output_folder(directory, "save_pretrained:")
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.generator.state_dict().items()}
        weights = save_safetensors(state, metadata={"format": PRETRAINED_FORMAT})
        write_atomic(folder / WEIGHTS_NAME, lambda fh: fh.write(weights))
        meta = {"format": PRETRAINED_FORMAT, "version": PRETRAINED_VERSION, "config": self.config.to_dict()}
        write_json_atomic(folder / CONFIG_NAME, meta)
        return folder

    # ------------------------------------------------------------------------------------ inpainting
    @property
    def uses_sketch(self) -> bool:
        """Whether the generator was trained with sketches (``model.sketch``)."""
        return generator_uses_sketch(self.generator)

    def __call__(self, image: ImageLike, mask: ImageLike, sketch: Optional[ImageLike] = None) -> Image.Image:
        """Inpaint ``image`` where ``mask`` marks holes -> PIL image of the input's size and mode (every mode:
        :mod:`mhtma_model.image_modes`; the rest of the rules: :mod:`mhtma_model.inference`); known pixels
        identical in the input's own values, its ``info`` (EXIF, ICC profile) carried over.

        ``image``: PIL, or an array (uint8 [H, W(, 3|4)], uint16 [H, W(, 3|4)], float32 [H, W]); for 16-bit
        colour the result's 16-bit values are :func:`mhtma_model.deep_colour.values_of` (result).
        ``mask``: PIL (value > 127 = hole) or an array, read by :func:`mhtma_model.images.mask_from_array`:
        bool True = hole, 0/1 arrays 1 = hole, uint8 0/255 pictures 255 = hole; other arrays are a ValueError."""
        return self.batch([image], [mask], None if sketch is None else [sketch])[0]

    def batch(self, images: Sequence[ImageLike], masks: Sequence[ImageLike],
              sketches: Optional[Sequence[Optional[ImageLike]]] = None) -> list[Image.Image]:
        """:meth:`__call__` of several images -> a list in order; same-size images share one forward."""
        images = [_as_image(x, "image") for x in images]
        masks = [_as_mask(x) for x in masks]
        sketches = None if sketches is None else [_as_image(x, "sketch") for x in sketches]
        with self.lock:
            return inpaint_images(self.generator, images, masks, sketches, self.device, self.max_size,
                                  self.precision)

    def __repr__(self) -> str:
        return (f"Inpainter(device={str(self.device)!r}, precision={self.precision!r}, "
                f"sketch={self.uses_sketch}, compiled={bool(getattr(self.generator, 'compiled_with', None))})")

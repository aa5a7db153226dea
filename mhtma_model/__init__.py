"""mhtma_model: the MHTMA inpainting GAN — networks, losses, masks, data, training, evaluation, inference, sketch guidance and web UI.

``from mhtma_model import Inpainter`` (:mod:`mhtma_model.inpainter`) is the object to start with; it is
imported on first use, so that ``import mhtma_model.images`` and friends stay light.
"""
__all__ = ["Inpainter"]


def __getattr__(name: str):
    if name == "Inpainter":
        from .inpainter import Inpainter

        return Inpainter
    raise AttributeError(f"module 'mhtma_model' has no attribute {name!r}")

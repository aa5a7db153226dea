"""LPIPS (Zhang et al. 2018, v0.1) with the ``lpips`` package's network and a backbone read from a local file.

Nothing downloads. The ``lpips`` package (the optional extra ``mhtma[eval]``, ``pip install lpips``) ships
the learned linear layers (``weights/v0.1/{alex,vgg}.pth``); its backbone would come from torchvision's
pretrained AlexNet / VGG16, a download, so the network is built with ``pnet_rand=True`` (random backbone,
no download) and the backbone's weights are then loaded from a file given as ``mhtma-eval
--lpips-backbone FILE`` or through ``$MHTMA_LPIPS_BACKBONE``: the ``state_dict`` of torchvision's model
saved with ``torch.save``, created once on a machine with internet access::

    python -c "import torch, torchvision; torch.save(torchvision.models.alexnet(weights='IMAGENET1K_V1').state_dict(), 'alexnet.pt')"
    python -c "import torch, torchvision; torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), 'vgg16.pt')"

(these are the weights ``lpips`` itself would download, so the values equal the package's). Only the
``features.*`` tensors are used. ``net="alex"`` (the default, what inpainting papers report) or
``"vgg"``; a file holding the other backbone is refused with a message naming it.

Convention: images in [0, 1] ``[B, 3, H, W]`` (the 8-bit composited outputs / 255) are mapped to
[-1, 1] (the package's ``normalize=True``); LPIPS = Σ over the 5 backbone layers of the spatial mean of
``w_l · (f̂_l(x) − f̂_l(y))²``, with ``f̂`` the channel-unit-normalised features and ``w_l`` the learned
1×1 weights. Lower is more similar; 0 for identical images.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from .weights_files import load_weights_file, resolve_weights_file

LPIPS_ENV = "MHTMA_LPIPS_BACKBONE"
LPIPS_NETS = ("alex", "vgg")
_TORCHVISION = {"alex": "alexnet", "vgg": "vgg16"}
_FIRST_KERNEL = {"alex": 11, "vgg": 3}  # features.0.weight is [64, 3, k, k]

HOW_TO_GET_BACKBONE = (
    "pip install lpips (or pip install 'mhtma[eval]') and save torchvision's backbone once on a machine with "
    "internet access: python -c \"import torch, torchvision; torch.save(torchvision.models.{model}"
    "(weights='IMAGENET1K_V1').state_dict(), '{model}.pt')\", then pass --lpips-backbone FILE or set "
    f"{LPIPS_ENV}=FILE"
)
LPIPS_MISSING = "LPIPS needs the lpips package, which is not installed: pip install lpips (or pip install 'mhtma[eval]')"


def how_to_get(net: str = "alex") -> str:
    return HOW_TO_GET_BACKBONE.format(model=_TORCHVISION[net])


def resolve_backbone_path(path: Union[str, os.PathLike, None] = None, net: str = "alex") -> Optional[Path]:
    """``path``, else ``$MHTMA_LPIPS_BACKBONE``, else None (LPIPS is then skipped by the caller).

    A path that is named but does not exist raises FileNotFoundError naming it and how to get it.
    """
    return resolve_weights_file(
        path, LPIPS_ENV, option="--lpips-backbone",
        not_found=lambda file, source: f"LPIPS backbone file not found: {file} (from {source}); {how_to_get(net)}")


def lpips_skipped_note(net: str = "alex", missing_package: bool = False) -> str:
    """The one line a command prints when LPIPS cannot be computed."""
    if missing_package:
        return f"LPIPS skipped: {LPIPS_MISSING}"
    return f"LPIPS skipped: no {_TORCHVISION[net]} backbone weights given; to report LPIPS, {how_to_get(net)}"


def require_lpips():
    """Import and return the ``lpips`` package, or raise ImportError with the install command."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import lpips
    except ImportError as exc:
        raise ImportError(LPIPS_MISSING) from exc
    return lpips


def lpips_available() -> bool:
    try:
        require_lpips()
    except ImportError:
        return False
    return True


def build_lpips(net: str = "alex") -> nn.Module:
    """The package's ``LPIPS(net, pretrained=True, pnet_rand=True)``: learned linear layers, random backbone;
    built offline and quietly (no prints, no torchvision deprecation warnings)."""
    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {', '.join(LPIPS_NETS)}, got {net!r}")
    lpips = require_lpips()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)


def backbone_features(state: dict, net: str, name: str = "the backbone file") -> dict:
    """A torchvision ``state_dict`` (or one under "state_dict") -> its ``features.*`` tensors, checked to be ``net``'s."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    first = state.get("features.0.weight") if isinstance(state, dict) else None
    if not isinstance(first, torch.Tensor) or first.dim() != 4:
        raise ValueError(f"{name} is not a torchvision AlexNet/VGG16 state dict (no 'features.0.weight'); "
                         f"{how_to_get(net)}")
    if first.shape[-1] != _FIRST_KERNEL[net]:
        other = "alex" if first.shape[-1] == _FIRST_KERNEL["alex"] else "vgg"
        raise ValueError(f"{name} holds a {_TORCHVISION[other]} backbone, not the {_TORCHVISION[net]} that "
                         f"--lpips-net {net} needs")
    return {k: v for k, v in state.items() if k.startswith("features.")}


def load_backbone(model: nn.Module, features: dict, name: str = "the backbone file") -> None:
    """Copy torchvision ``features.<i>.*`` tensors into the package's ``net.slice<k>.<i>.*`` (same layer index)."""
    own = model.net.state_dict()
    mapped = {key: features.get("features." + key.split(".", 1)[1]) for key in own}
    missing = [k for k, v in mapped.items() if v is None]
    if missing:
        raise ValueError(f"{name} lacks backbone tensors: {', '.join('features.' + k.split('.', 1)[1] for k in missing[:4])}")
    try:
        model.net.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{name} does not match the LPIPS backbone layout: {exc}") from exc


class LpipsDistance(nn.Module):
    """LPIPS v0.1 (module docstring): ``forward(x, y)`` with ``[B, 3, H, W]`` in [0, 1] -> float32 ``[B]``.

    ``backbone``: a path to a torchvision state dict, or the state dict itself; ``net``: "alex" or "vgg".
    Raises ImportError without the ``lpips`` package, FileNotFoundError / ValueError for a bad file.
    """

    def __init__(self, backbone: Union[str, os.PathLike, dict], net: str = "alex"):
        super().__init__()
        name = "the backbone state dict"
        if not isinstance(backbone, dict):
            name = str(Path(backbone))
            backbone = load_weights_file(backbone, "LPIPS backbone file", how_to_get(net))
        self.net_name = net
        self.model = build_lpips(net)
        load_backbone(self.model, backbone_features(backbone, net, name), name)
        self.model.eval().requires_grad_(False)

    def train(self, mode: bool = True):  # always inference
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3 or x.shape != y.shape:
            raise ValueError(f"LPIPS inputs must both be [B, 3, H, W], got {list(x.shape)} and {list(y.shape)}")
        return self.model(x.float(), y.float(), normalize=True).reshape(x.shape[0])


__all__ = ["LPIPS_ENV", "LPIPS_NETS", "LPIPS_MISSING", "how_to_get", "resolve_backbone_path", "lpips_skipped_note",
           "require_lpips", "lpips_available", "build_lpips", "backbone_features", "load_backbone", "LpipsDistance"]

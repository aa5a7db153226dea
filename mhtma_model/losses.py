"""Training losses (paper Sec. III-B): adversarial (hinge, WGAN-GP), VGG16 perceptual loss, and the
weighted generator objective.

Scores are the discriminator's raw outputs ``[B, 1]``; every loss is a mean over the batch.

- Hinge (SN-GAN, default)::

      L_D = mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))        L_G = -mean(D(fake))

- WGAN-GP (option, paper Table II)::

      L_D = mean(D(fake)) - mean(D(real)) + 10 * mean((||grad_x D(x_hat)||_2 - 1)^2)
      x_hat = a * real + (1 - a) * fake,   a ~ U(0, 1) per sample       L_G = -mean(D(fake))

- Perceptual: ``L_p = mean |V(x) - V(y)|`` with V = VGG16 up to relu1_2 (ImageNet-normalised
  inputs), weights from a local file in torchvision's ``vgg16`` state-dict format.
- Generator: ``1.2 * |I_c - I_gt|_1 + 1.0 * |I_out - I_gt|_1 + 0.004 * L_p(I_c, I_gt) + 0.01 * L_G``.
"""
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .networks import IMAGENET_MEAN
from .weights_files import resolve_weights_file

#: Environment variable holding the VGG16 weights path.
VGG16_ENV = "MHTMA_VGG16"

#: How to obtain the weights file (on any machine with internet access).
VGG16_HOWTO = (
    "it must be torchvision's VGG16 ImageNet state dict (VGG16_Weights.IMAGENET1K_V1) saved with torch.save; "
    "create it on a machine with internet access with "
    "python -c \"import torch, torchvision; torch.save(torchvision.models.vgg16("
    "weights=torchvision.models.VGG16_Weights.IMAGENET1K_V1).state_dict(), 'vgg16.pth')\" "
    f"and pass its path (the loss section of the config, or the environment variable {VGG16_ENV}); "
    "or set the perceptual-loss weight to 0 to train without it"
)

_IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision vgg16 ``features`` layers up to relu1_2 (conv1_1, relu, conv1_2, relu) and their shapes.
_RELU1_2_KEYS = {
    "features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3), "features.2.bias": (64,),
}


# ---------------------------------------------------------------------------------------- adversarial

def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """``mean(relu(1 - real)) + mean(relu(1 + fake))`` (discriminator hinge loss, paper Eq. 4)."""
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """``-mean(fake)`` (generator hinge loss, paper Eq. 5; the WGAN generator loss is the same)."""
    return -fake_scores.mean()


def wgan_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """``mean(fake) - mean(real)`` (critic loss; add :func:`gradient_penalty`)."""
    return fake.mean() - real.mean()


def gradient_penalty(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor,
                     weight: float = 10.0) -> torch.Tensor:
    r"""WGAN-GP penalty ``weight * mean_b((||\nabla_x D(x_hat_b, mask_b)||_2 - 1)^2)``.

    ``x_hat = a * real + (1 - a) * fake`` with ``a ~ U(0, 1)`` per sample (torch's global RNG);
    ``fake`` is detached, the graph is kept (``create_graph``) so the penalty trains D.
    Shapes: real, fake ``[B, 3, H, W]``, mask ``[B, 1, H, W]``; returns a scalar.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty: real {tuple(real.shape)} and fake {tuple(fake.shape)} differ in shape")
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    mixed = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    scores = discriminator(mixed, mask)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return weight * (norms - 1).square().mean()


# ---------------------------------------------------------------------------------------- perceptual

def resolve_vgg16_path(path=None) -> Path:
    """The VGG16 weights file: ``path`` if given, else ``$MHTMA_VGG16``.

    Raises FileNotFoundError naming the file (or the missing setting) and how to obtain it.
    """
    return resolve_weights_file(
        path, VGG16_ENV, option="the argument", env_source=f"the environment variable {VGG16_ENV}",
        missing=f"no VGG16 weights file given (perceptual loss): neither a path nor {VGG16_ENV} is set; {VGG16_HOWTO}",
        not_found=lambda file, source: f"VGG16 weights file {file} (from {source}) does not exist; {VGG16_HOWTO}")


def _load_state_dict(path: Path) -> Mapping:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"VGG16 weights file {path} holds a {type(state).__name__}, not a state dict; {VGG16_HOWTO}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def vgg16_relu1_2(weights_path=None) -> nn.Sequential:
    """torchvision's VGG16 ``features[:4]`` (conv1_1, ReLU, conv1_2, ReLU) loaded from ``weights_path``
    (resolved by :func:`resolve_vgg16_path`), frozen, in eval mode: ``[B, 3, H, W] -> [B, 64, H, W]``.

    The full network is built on the meta device (no memory, no init), only the four layers are
    materialised. Extra keys in the file (deeper features, classifier) are ignored; missing or
    mis-shaped relu1_2 keys raise ValueError naming the file and the keys.
    """
    import torchvision

    path = resolve_vgg16_path(weights_path)
    state = _load_state_dict(path)
    missing = [k for k in _RELU1_2_KEYS if k not in state]
    if missing:
        raise ValueError(f"VGG16 weights file {path} lacks {missing} (found {len(state)} keys, e.g. "
                         f"{sorted(state)[:3]}); {VGG16_HOWTO}")
    bad = {k: tuple(state[k].shape) for k, shape in _RELU1_2_KEYS.items() if tuple(state[k].shape) != shape}
    if bad:
        raise ValueError(f"VGG16 weights file {path}: wrong shapes {bad}, expected "
                         f"{ {k: _RELU1_2_KEYS[k] for k in bad} }; {VGG16_HOWTO}")
    with torch.device("meta"):
        features = torchvision.models.vgg16(weights=None, init_weights=False).features[:4]
    features.to_empty(device="cpu")
    features.load_state_dict({k[len("features."):]: state[k].float() for k in _RELU1_2_KEYS})
    features.requires_grad_(False)
    return features.eval()


class PerceptualLoss(nn.Module):
    r"""``L_p(x, y) = mean |V(n(x)) - V(n(y))|``, V = VGG16 relu1_2 features (frozen).

    ``x, y [B, 3, H, W]`` in [-1, 1]; ``n(x) = ((x + 1) / 2 - mean) / std`` (ImageNet statistics).
    The target's features are computed without gradient. ``weights_path``: the torchvision vgg16
    state-dict file, or None for ``$MHTMA_VGG16`` (see :func:`resolve_vgg16_path`).
    """

    def __init__(self, weights_path=None):
        super().__init__()
        self.weights_path = resolve_vgg16_path(weights_path)
        self.features = vgg16_relu1_2(self.weights_path)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        """The VGG stays in eval mode (it is a fixed loss network)."""
        super().train(mode)
        self.features.eval()
        return self

    def extract(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 3, H, W]`` in [-1, 1] -> relu1_2 features ``[B, 64, H, W]``."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"PerceptualLoss: inputs must have shape [B, 3, H, W], got {tuple(x.shape)}")
        return self.features(((x + 1) / 2 - self.mean.to(x.dtype)) / self.std.to(x.dtype))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"PerceptualLoss: shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
        with torch.no_grad():
            target = self.extract(y)
        return (self.extract(x) - target).abs().mean()


# ---------------------------------------------------------------------------------------- generator

#: Paper weights: lambda_1 (coarse L1), lambda_2 (output L1), lambda_p (perceptual), lambda_adv.
PAPER_WEIGHTS = {"l1_coarse": 1.2, "l1_out": 1.0, "perceptual": 0.004, "adversarial": 0.01}


def generator_loss(coarse: torch.Tensor, output: torch.Tensor, target: torch.Tensor, fake_scores: torch.Tensor,
                   perceptual: PerceptualLoss | None = None, weights: Mapping | None = None) -> dict:
    """Paper Eq. 6: ``l1_coarse*|I_c - I_gt|_1 + l1_out*|I_out - I_gt|_1 + perceptual*L_p(I_c) + adversarial*L_G``.

    ``output`` is the composited I_out; ``fake_scores = D(I_out)``; L_G = ``-mean(fake_scores)`` (the same
    for hinge and WGAN). ``perceptual=None`` drops that term (weight must then be 0 or the term is
    reported as 0). Returns the terms ``{"l1_coarse", "l1_out", "perceptual", "adversarial", "total"}``
    (unweighted terms, weighted total). ``weights`` overrides entries of :data:`PAPER_WEIGHTS`.
    """
    w = dict(PAPER_WEIGHTS)
    if weights:
        unknown = set(weights) - set(w)
        if unknown:
            raise ValueError(f"generator_loss: unknown weight names {sorted(unknown)}; valid: {sorted(w)}")
        w.update(weights)
    terms = {
        "l1_coarse": F.l1_loss(coarse, target),
        "l1_out": F.l1_loss(output, target),
        "perceptual": perceptual(coarse, target) if perceptual is not None else coarse.new_zeros(()),
        "adversarial": hinge_g_loss(fake_scores),
    }
    terms["total"] = sum(w[name] * value for name, value in terms.items())
    return terms

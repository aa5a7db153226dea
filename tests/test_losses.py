"""Losses on known values; WGAN-GP with an analytic critic; VGG16 relu1_2 loading from a state dict the
test writes itself (torchvision format) and the missing-file errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mhtma_model.losses import (VGG16_ENV, PerceptualLoss, generator_loss, gradient_penalty, hinge_d_loss,
                                hinge_g_loss, resolve_vgg16_path, vgg16_relu1_2, wgan_d_loss)
from mhtma_kernels.testing import assert_close


def test_hinge_losses_known_values():
    real = torch.tensor([[2.0], [0.5]])
    fake = torch.tensor([[-2.0], [0.0]])
    # D: mean(relu(1-2), relu(1-0.5)) = 0.25; mean(relu(1-2), relu(1+0)) = 0.5
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.75)
    assert hinge_g_loss(torch.tensor([[1.0], [-3.0]])).item() == pytest.approx(1.0)


def test_wgan_losses_known_values():
    assert wgan_d_loss(torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [2.0]])).item() == pytest.approx(-1.0)


class LinearCritic(nn.Module):
    """D(x, mask) = sum(w * x): its input gradient is w everywhere, so the penalty is known exactly."""

    def __init__(self, value: float, shape):
        super().__init__()
        self.w = nn.Parameter(torch.full(shape, value, dtype=torch.float64))

    def forward(self, x, mask):
        return (x * self.w).flatten(1).sum(1, keepdim=True)


@pytest.mark.parametrize("value", [pytest.param(0.5, id="w0.5"), pytest.param(0.1, id="w0.1")])
def test_gradient_penalty_analytic(value):
    shape = (3, 4, 4)
    critic = LinearCritic(value, shape)
    real = torch.randn(5, *shape, dtype=torch.float64)
    fake = torch.randn(5, *shape, dtype=torch.float64, requires_grad=True)
    penalty = gradient_penalty(critic, real, fake, torch.zeros(5, 1, 4, 4, dtype=torch.float64))
    norm = value * math.sqrt(48)
    expected = torch.tensor(10 * (norm - 1) ** 2, dtype=torch.float64)
    assert_close(penalty.detach(), expected, torch.float64, "penalty")
    penalty.backward()
    # d/dw of 10*(||w||-1)^2 = 20*(||w||-1) * w/||w||: the penalty trains the critic
    grad_expected = torch.full(shape, 20 * (norm - 1) * value / norm, dtype=torch.float64)
    assert_close(critic.w.grad, grad_expected, torch.float64, "critic grad")
    assert fake.grad is None, "fake must be detached inside the penalty"


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """torchvision-format state dict with random weights: relu1_2 layers plus extra keys to be ignored."""
    import torchvision

    torch.manual_seed(0)
    try:  # vgg16's `features` alone (same layer indices), skipping the 120M-parameter classifier init
        from torchvision.models.vgg import cfgs, make_layers

        features = make_layers(cfgs["D"])
    except ImportError:
        features = torchvision.models.vgg16(weights=None).features
    state = {f"features.{i}.{p}": getattr(features[i], p).detach().clone() for i in (0, 2, 5)
             for p in ("weight", "bias")}
    state["classifier.6.bias"] = torch.zeros(1000)  # a classifier key: allowed, ignored
    path = tmp_path_factory.mktemp("vgg") / "vgg16-random.pth"
    torch.save(state, path)
    return path, state


def _manual_relu1_2(x, state):
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=x.dtype).view(1, 3, 1, 1)
    h = ((x + 1) / 2 - mean) / std
    h = F.relu(F.conv2d(h, state["features.0.weight"].to(x.dtype), state["features.0.bias"].to(x.dtype), padding=1))
    return F.relu(F.conv2d(h, state["features.2.weight"].to(x.dtype), state["features.2.bias"].to(x.dtype), padding=1))


def test_perceptual_loss_matches_manual_vgg(vgg_file):
    path, state = vgg_file
    loss = PerceptualLoss(path)
    assert all(not p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.features.training
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    value = loss(x, y)
    expected = (_manual_relu1_2(x.detach().double(), state) - _manual_relu1_2(y.double(), state)).abs().mean()
    assert_close(value.detach(), expected, torch.float32, "perceptual")
    assert loss(y, y).item() == 0.0
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_vgg_env_variable_is_used(vgg_file, monkeypatch):
    path, _ = vgg_file
    monkeypatch.setenv(VGG16_ENV, str(path))
    assert resolve_vgg16_path() == path
    assert resolve_vgg16_path(None) == path
    layers = vgg16_relu1_2()
    assert layers(torch.zeros(1, 3, 8, 8)).shape == (1, 64, 8, 8)


def test_vgg_missing_keys_error(tmp_path):
    path = tmp_path / "classifier-only.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.0.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ValueError, match=r"vgg16 state dict|VGG16_Weights") as info:
        PerceptualLoss(path)
    message = str(info.value)
    assert str(path) in message and "features.2.weight" in message and "features.0.bias" in message


def test_vgg_wrong_shape_error(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(32, 3, 3, 3), "features.0.bias": torch.zeros(64),
                "features.2.weight": torch.zeros(64, 64, 3, 3), "features.2.bias": torch.zeros(64)}, path)
    with pytest.raises(ValueError, match="wrong shapes.*features.0.weight"):
        vgg16_relu1_2(path)


def test_vgg_missing_file_error_names_file_and_howto(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(FileNotFoundError) as info:
        PerceptualLoss(missing)
    message = str(info.value)
    assert str(missing) in message
    assert "VGG16_Weights.IMAGENET1K_V1" in message and "torch.save" in message
    monkeypatch.delenv(VGG16_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=VGG16_ENV):
        resolve_vgg16_path()
    monkeypatch.setenv(VGG16_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=f"{VGG16_ENV}"):
        resolve_vgg16_path()


def test_generator_loss_weights(vgg_file):
    path, _ = vgg_file
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1
    coarse, output = target + 0.5, target - 0.25
    scores = torch.tensor([[1.0], [3.0]])
    terms = generator_loss(coarse, output, target, scores)
    assert terms["l1_coarse"].item() == pytest.approx(0.5)
    assert terms["l1_out"].item() == pytest.approx(0.25)
    assert terms["perceptual"].item() == 0.0
    assert terms["adversarial"].item() == pytest.approx(-2.0)
    assert terms["total"].item() == pytest.approx(1.2 * 0.5 + 0.25 + 0.01 * -2.0)
    with_vgg = generator_loss(coarse, output, target, scores, perceptual=PerceptualLoss(path))
    assert with_vgg["perceptual"].item() > 0
    assert with_vgg["total"].item() == pytest.approx(terms["total"].item() + 0.004 * with_vgg["perceptual"].item())
    with pytest.raises(ValueError, match="unknown weight names"):
        generator_loss(coarse, output, target, scores, weights={"l2": 1.0})


def test_gradient_penalty_through_global_local_discriminator():
    from mhtma_model.networks import GlobalLocalDiscriminator

    torch.manual_seed(0)
    disc = GlobalLocalDiscriminator(base_channels=4, image_size=64)
    real, fake = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 10:30, 10:30] = 1
    penalty = gradient_penalty(disc, real, fake, mask)
    assert torch.isfinite(penalty) and penalty.item() > 0
    penalty.backward()
    grads = [p.grad for p in disc.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)

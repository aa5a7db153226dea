"""Baselines: DeepFill v2 contextual attention (conv/for-loop) and ATMA (LeakyReLU temperature),
each against a straightforward dense reimplementation, per image with its own mask."""
import math

import pytest
import torch
import torch.nn.functional as F

from mhtma_kernels import ATMA, ContextualAttention, MaskedTemperatureAttention
from mhtma_kernels.layers.patches import resize_mask
from mhtma_kernels.testing import assert_close


def masks_per_image(batch, height, width):
    """A different rectangular hole per image (image b's hole moves and grows with b)."""
    mask = torch.zeros(batch, 1, height, width)
    for b in range(batch):
        mask[b, :, b:b + height // 3 + b, 2 * b:2 * b + width // 3] = 1
    return mask


def dense_contextual(x1, hole1, s, scale):
    """One image, dense unfold/softmax: x1 [C, H, W], hole1 [1, H, W] at x's size -> [C, H, W]."""
    c, h, w = x1.shape
    p = s // 2
    patches = F.unfold(x1[None], s, padding=p)[0].t()  # [H*W, D] raw, 'same' padding (queries = keys)
    keys = patches / patches.norm(dim=1, keepdim=True).clamp_min(1e-4)
    mask_patches = F.unfold(hole1[None], s, padding=p)[0].t()  # [H*W, s*s]
    mm = (mask_patches.sum(dim=1) == 0).to(x1.dtype)  # [L]
    scores = (patches @ keys.t()) * mm  # [Nq, L]
    weights = torch.softmax(scale * scores, dim=1) * mm
    pasted = weights @ patches  # [Nq, D]
    return F.fold(pasted.t()[None], (h, w), s, padding=p)[0] / (s * s)


def dense_atma(x1, hole1, layer):
    """One image, the masked softmax materialised: z = s / t (valid), -lambda_m (hole)."""
    c, h, w = x1.shape
    s, p = layer.patch_size, layer.patch_size // 2
    t = layer.temperature_net(x1[None], hole1[None])[0, 0]
    fe = layer.embed(x1[None])
    q = F.unfold(fe, s, padding=p)[0].t()
    k = F.unfold(fe, s)[0].t()
    valid = F.unfold(hole1[None], s)[0].sum(0) == 0  # [Nk]
    sim = F.normalize(q, dim=1, eps=1e-6) @ F.normalize(k, dim=1, eps=1e-6).t()
    z = torch.where(valid[None], sim / t, torch.full_like(sim, -layer.lambda_m))
    pasted = torch.softmax(z, dim=1) @ k
    count = F.fold(torch.ones_like(pasted.t()[None]), (h, w), s, padding=p)
    return F.fold(pasted.t()[None], (h, w), s, padding=p)[0] / count[0], t


# ---------------------------------------------------------------------------------------- ContextualAttention
@pytest.mark.parametrize("patch_size", [1, 3, 5], ids=lambda s: f"s{s}")
@pytest.mark.parametrize("mask_scale", [1, 2], ids=["mask-same-size", "mask-2x"])
def test_contextual_matches_dense_per_image(patch_size, mask_scale):
    torch.manual_seed(0)
    x = torch.randn(3, 4, 9, 11, dtype=torch.float64)
    mask = masks_per_image(3, 9 * mask_scale, 11 * mask_scale)
    layer = ContextualAttention(4, patch_size=patch_size)
    out = layer(x, mask)
    assert out.shape == x.shape and layer.last_temperature is None
    hole = resize_mask(mask, (9, 11)).double()
    for b in range(3):
        assert_close(out[b], dense_contextual(x[b], hole[b], patch_size, 10.0), torch.float64, f"image {b}")


def test_contextual_image_b_uses_mask_b():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    mask = masks_per_image(2, 8, 8)
    assert not torch.equal(mask[0], mask[1])
    out = ContextualAttention(patch_size=3)(x, mask)
    with_mask_0 = dense_contextual(x[1], mask[0].double(), 3, 10.0)
    assert_close(out[1], dense_contextual(x[1], mask[1].double(), 3, 10.0), torch.float64, "image 1, mask 1")
    assert (out[1] - with_mask_0).abs().max() > 1e-3  # image 0's mask would give another result


def test_contextual_all_hole_is_zero_and_hole_keys_unused():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    layer = ContextualAttention(3)
    out = layer(x, torch.ones(2, 1, 7, 8))
    assert torch.equal(out, torch.zeros_like(out))
    # Changing pixels deep inside a hole (every patch over them is a hole key) leaves the output of
    # pixels outside the hole's 2-pixel rim unchanged.
    mask = torch.zeros(1, 1, 12, 12)
    mask[..., 3:9, 3:9] = 1
    y = x.detach()[:1].new_zeros(1, 3, 12, 12).normal_()
    y2 = y.clone()
    y2[..., 5:7, 5:7] += 10
    far = torch.ones(12, 12, dtype=torch.bool)
    far[1:11, 1:11] = False
    assert torch.equal(layer(y, mask)[..., far], layer(y2, mask)[..., far])
    (layer(x, masks_per_image(2, 7, 8)) ** 2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_contextual_validation():
    with pytest.raises(ValueError, match="x must have shape"):
        ContextualAttention(4)(torch.randn(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="batch"):
        ContextualAttention()(torch.randn(2, 3, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="patch_size"):
        ContextualAttention(patch_size=2)
    with pytest.raises(ValueError, match="softmax_scale"):
        ContextualAttention(softmax_scale=0)
    with pytest.raises(ValueError, match="smaller than patch_size"):
        ContextualAttention(patch_size=5)(torch.randn(1, 3, 4, 8), torch.zeros(1, 1, 4, 8))


# ---------------------------------------------------------------------------------------- ATMA
@pytest.mark.parametrize("sign", ["positive-t", "negative-t"])
def test_atma_matches_dense_per_image(sign):
    torch.manual_seed(3)
    layer = ATMA(4, patch_size=3).double()
    if sign == "negative-t":
        with torch.no_grad():
            layer.temperature_net.linear.bias.fill_(-2.0)  # LeakyReLU head: t ~ -0.4, kept negative
    x = torch.randn(3, 4, 8, 9, dtype=torch.float64)
    mask = masks_per_image(3, 16, 18)
    out = layer(x, mask)
    assert out.shape == x.shape and layer.last_temperature.shape == (3, 1)
    assert ((layer.last_temperature < 0) if sign == "negative-t" else (layer.last_temperature > 0)).all()
    hole = resize_mask(mask, (8, 9)).double()
    for b in range(3):
        expected, t = dense_atma(x[b], hole[b], layer)
        assert_close(out[b], expected, torch.float64, f"image {b}")
        assert layer.last_temperature[b, 0].item() == pytest.approx(t.item(), rel=1e-12)


def test_atma_equals_single_head_mhtma_for_positive_t():
    """With t > 0 the ATMA softmax is the shared op: same weights in a 1-head MHTMA layer, fixed to
    the temperature ATMA produced, give the same output."""
    torch.manual_seed(4)
    atma = ATMA(4).double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    mask = masks_per_image(2, 7, 7)
    out = atma(x, mask)
    for b in range(2):
        mhtma = MaskedTemperatureAttention(4, heads=1, temperature=atma.last_temperature[b, 0].item(),
                                           backend="reference").double()
        mhtma.embed.load_state_dict(atma.embed.state_dict())
        assert_close(out[b:b + 1], mhtma(x[b:b + 1], mask[b:b + 1]), torch.float64, f"image {b}")


def test_atma_gradients_reach_temperature_net():
    torch.manual_seed(5)
    layer = ATMA(3)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = layer(x, masks_per_image(2, 8, 8))
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad.abs().sum() > 0
    for name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="heads must be 1"):
        ATMA(3, heads=2)
    assert math.isclose(ATMA(3).temperature_net.linear.bias[0].item(), 0.1, rel_tol=1e-6)

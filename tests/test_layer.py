"""MaskedTemperatureAttention and TemperatureNetwork: shapes, an independent per-head oracle, masking,
gradients, backend agreement and input validation."""
import math

import pytest
import torch
import torch.nn.functional as F

from mhtma_kernels import MaskedTemperatureAttention, TemperatureNetwork, masked_temperature_attention_reference
from mhtma_kernels.layers.patches import (extract_patches, fold_patches, key_rows, key_validity, patch_counts,
                                          query_patch_inverse_norms, resize_mask)
from mhtma_kernels.ops import attention_weights_reference
from mhtma_kernels.testing import assert_close



def random_mask(batch, height, width, ratio=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(batch, 1, height, width, generator=g) < ratio).float()


def block_mask(batch, height, width):
    """Image b has a rectangular hole at a different place (and size) per image."""
    mask = torch.zeros(batch, 1, height, width)
    for b in range(batch):
        y0, x0 = (b * 3) % max(1, height // 2), (b * 5) % max(1, width // 2)
        mask[b, :, y0:y0 + height // 3 + b, x0:x0 + width // 3 + 1] = 1
    return mask


def make_layer(dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    return MaskedTemperatureAttention(**kwargs).to(dtype)


# ---------------------------------------------------------------------------------------------- oracle
def oracle_resize(mask, h, w):
    """Independent resize: target cell (i, j) is a hole iff any source pixel it covers is >= 0.5.

    Downsizing: cell i covers source rows floor(i*H0/H) .. ceil((i+1)*H0/H)-1 (adaptive pooling);
    upsizing: cell i takes source row floor(i*H0/H) (nearest)."""
    h0, w0 = mask.shape[-2:]

    def span(i, n0, n):
        if n0 >= n:
            return range(math.floor(i * n0 / n), math.ceil((i + 1) * n0 / n))
        return range(math.floor(i * n0 / n), math.floor(i * n0 / n) + 1)

    out = torch.zeros(mask.shape[0], 1, h, w, dtype=torch.float64)
    for i in range(h):
        for j in range(w):
            rows, cols = span(i, h0, h), span(j, w0, w)
            out[:, 0, i, j] = (mask[:, 0, rows.start:rows.stop, cols.start:cols.stop] >= 0.5).flatten(1).any(1).double()
    return out


def oracle_layer(layer, x, mask):
    """The layer rebuilt from its own weights: a loop over heads, two unfolds, the reference op,
    window-by-window key validity and a pixel-by-pixel overlap-averaging fold."""
    b, c, h, w = x.shape
    s, p, hc = layer.patch_size, layer.patch_size // 2, layer.head_channels
    hole = oracle_resize(mask, h, w)
    nky, nkx = h - s + 1, w - s + 1
    valid = torch.stack([
        torch.tensor([bool(hole[i, 0, y:y + s, x0:x0 + s].sum() == 0) for y in range(nky) for x0 in range(nkx)])
        for i in range(b)])
    t = layer.temperature(x, hole.to(x.dtype))
    heads_out = []
    for k in range(layer.heads):
        weight = layer.embed.weight[k * hc:(k + 1) * hc]
        bias = layer.embed.bias[k * hc:(k + 1) * hc]
        fe = F.conv2d(x, weight, bias)
        q = F.unfold(fe, s, padding=p).transpose(1, 2)[:, None]  # [B, 1, H*W, D]
        kk = F.unfold(fe, s).transpose(1, 2)[:, None]  # [B, 1, Nk, D]
        patches = masked_temperature_attention_reference(q, kk, kk, valid, t[:, k:k + 1], layer.lambda_m)[:, 0]
        canvas = x.new_zeros(b, hc, h + 2 * p, w + 2 * p)
        count = x.new_zeros(1, 1, h + 2 * p, w + 2 * p)
        for i in range(h * w):
            y0, x0 = divmod(i, w)
            canvas[:, :, y0:y0 + s, x0:x0 + s] += patches[:, i].reshape(b, hc, s, s)
            count[:, :, y0:y0 + s, x0:x0 + s] += 1
        heads_out.append(canvas[:, :, p:p + h, p:p + w] / count[:, :, p:p + h, p:p + w])
    out = torch.cat(heads_out, dim=1)
    return layer.project(out) if layer.project is not None else out


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("size", [(17, 23), (8, 8), (6, 11)], ids=["17x23", "8x8", "6x11"])
@pytest.mark.parametrize("mask_size", ["same", "larger", "smaller"], ids=lambda m: f"mask-{m}")
@pytest.mark.parametrize("patch_size", [1, 3, 5], ids=lambda s: f"s{s}")
def test_shapes(size, mask_size, patch_size):
    h, w = size
    h0, w0 = {"same": (h, w), "larger": (4 * h + 1, 3 * w), "smaller": (h // 2 + 1, w // 3 + 1)}[mask_size]
    layer = make_layer(torch.float32, in_channels=6, heads=2, patch_size=patch_size, backend="torch")
    x = torch.randn(3, 6, h, w)
    out = layer(x, random_mask(3, h0, w0))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert layer.last_temperature.shape == (3, 2)
    assert not layer.last_temperature.requires_grad
    assert (layer.last_temperature > 0).all()


@pytest.mark.parametrize("in_channels,heads,head_channels", [(4, 2, None), (5, 2, None), (4, 3, 3), (6, 1, None)],
                         ids=["c4-k2", "c5-k2-project", "c4-k3-c3", "c6-k1"])
@pytest.mark.parametrize("patch_size", [1, 3, 5], ids=lambda s: f"s{s}")
def test_layer_equals_per_head_reference_loop(in_channels, heads, head_channels, patch_size):
    layer = make_layer(in_channels=in_channels, heads=heads, head_channels=head_channels,
                       patch_size=patch_size, backend="reference")
    assert (layer.project is not None) == (heads * layer.head_channels != in_channels)
    torch.manual_seed(1)
    x = torch.randn(2, in_channels, 7, 9, dtype=torch.float64)
    mask = block_mask(2, 15, 17)  # mask resolution != feature resolution, different hole per image
    assert_close(layer(x, mask), oracle_layer(layer, x, mask), torch.float64, "layer vs per-head loop")


def test_fixed_temperature_equals_oracle_and_is_reported():
    layer = make_layer(in_channels=4, heads=2, temperature=0.25, backend="torch")
    assert layer.temperature_net is None
    x = torch.randn(3, 4, 6, 7, dtype=torch.float64)
    mask = block_mask(3, 6, 7)
    assert_close(layer(x, mask), oracle_layer(layer, x, mask), torch.float64, "fixed t")
    assert torch.equal(layer.last_temperature, torch.full((3, 2), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("mask_kind", ["holes", "all-hole", "no-hole"])
def test_gradients_reach_temperature_net_embedding_and_input(mask_kind):
    layer = make_layer(torch.float32, in_channels=5, heads=2, backend="torch")  # 5 -> projection exists
    x = torch.randn(2, 5, 9, 10, requires_grad=True)
    mask = {"holes": block_mask(2, 9, 10), "all-hole": torch.ones(2, 1, 9, 10), "no-hole": torch.zeros(2, 1, 9, 10)}
    out = layer(x, mask[mask_kind])
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, param in layer.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        if mask_kind == "all-hole" and name.startswith("temperature_net"):
            # every key invalid -> uniform weights, independent of t: its gradient is exactly 0
            assert param.grad.abs().sum() == 0, f"{name} should not influence an all-hole output"
        else:
            assert param.grad.abs().sum() > 0, f"{name} has an all-zero gradient"
    assert any(n.startswith("temperature_net.encoder") for n, _ in layer.named_parameters())


def test_all_hole_mask_gives_uniform_average():
    """Every key invalid -> uniform weights: each query patch becomes the mean of all key patches."""
    layer = make_layer(in_channels=4, heads=2, temperature=0.1, backend="torch")
    x = torch.randn(1, 4, 6, 8, dtype=torch.float64)
    fe = layer.embed(x).view(2, 2, 6, 8)
    _, keys = extract_patches(fe, 3)
    mean_patch = keys.mean(dim=1, keepdim=True).expand(-1, 48, -1)
    expected = fold_patches(mean_patch, (6, 8), 3).reshape(1, 4, 6, 8)
    assert_close(layer(x, torch.ones(1, 1, 3, 3)), expected, torch.float64, "all-hole")


@pytest.mark.parametrize("lambda_m,t", [(30.0, 1.0), (1e4, 0.05)], ids=["lambda30-t1", "lambda1e4-t0.05"])
def test_hole_keys_get_no_weight(lambda_m, t):
    """Through the reference weights on the layer's own patches: a hole key's weight is at most
    exp(-lambda_m + 1/t) (valid logits >= -1/t), and those weights are exactly what the layer uses."""
    layer = make_layer(in_channels=4, heads=2, lambda_m=lambda_m, temperature=t, backend="reference")
    x = torch.randn(2, 4, 10, 11, dtype=torch.float64)
    mask = block_mask(2, 20, 22)
    hole = resize_mask(mask, (10, 11))
    valid = key_validity(hole, 3)
    assert valid.any(1).all() and (~valid).any(1).all()
    q, k = extract_patches(layer.embed(x).view(4, 2, 10, 11), 3)
    q, k = q.unflatten(0, (2, 2)), k.unflatten(0, (2, 2))
    temps = torch.full((2, 2), t, dtype=torch.float64)
    weights = attention_weights_reference(q, k, valid, temps, lambda_m)  # [B, K, Nq, Nk]
    hole_weights = weights.masked_select(~valid[:, None, None, :])
    bound = math.exp(-lambda_m + 1.0 / t)
    assert hole_weights.max().item() <= bound
    assert_close(weights.masked_fill(~valid[:, None, None, :], 0).sum(-1), torch.ones(2, 2, 110, dtype=torch.float64),
                 torch.float64, "valid weights sum to 1")
    patches = weights @ k
    expected = fold_patches(patches.flatten(0, 1), (10, 11), 3).reshape(2, 4, 10, 11)
    assert_close(layer(x, mask), expected, torch.float64, "layer uses these weights")


def test_image_b_uses_its_own_mask():
    """Changing image 1's mask changes only image 1's output."""
    layer = make_layer(in_channels=4, heads=2, backend="torch")
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    mask = block_mask(2, 8, 8)
    other = mask.clone()
    other[1] = 0
    out, out_other = layer(x, mask), layer(x, other)
    assert torch.equal(out[0], out_other[0])
    assert not torch.allclose(out[1], out_other[1])


BACKEND_PARAMS = [
    pytest.param("torch", id="torch"),
    pytest.param("triton", id="triton"),
]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_backends_agree_inside_layer(backend):
    """float32 layer on `backend` vs the same weights in float64 on `reference`: output and grads.
    The triton backend runs on the GPU where there is one (CPU tensors under the interpreter otherwise)."""
    dtype = torch.float64 if backend == "torch" else torch.float32
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    ref = make_layer(torch.float64, in_channels=5, heads=2, backend="reference")
    layer = make_layer(dtype, in_channels=5, heads=2, backend=backend).to(device)
    layer.load_state_dict(ref.state_dict())
    x64 = torch.randn(2, 5, 6, 7, dtype=torch.float64, requires_grad=True)
    x = x64.detach().to(device, dtype).requires_grad_()
    mask = block_mask(2, 12, 7)
    grad_out = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    out_ref, out = ref(x64, mask), layer(x, mask.to(device))
    assert out.device.type == device
    assert_close(out.cpu(), out_ref, dtype, f"{backend} output")
    (out_ref * grad_out).sum().backward()
    (out * grad_out.to(device, dtype)).sum().backward()
    assert_close(x.grad.cpu(), x64.grad, dtype, f"{backend} dx")
    ref_params = dict(ref.named_parameters())
    for name, param in layer.named_parameters():
        assert_close(param.grad.cpu(), ref_params[name].grad, dtype, f"{backend} d{name}")


# ------------------------------------------------------------------------------- patch plumbing vs F.unfold
def unfold_rows(features, patch_size, padded):
    """Oracle: F.unfold patches as rows [N, L, D], reordered from channel-major (c, dy, dx) to the
    layer's pixel-major (dy, dx, c)."""
    n, c = features.shape[:2]
    cols = F.unfold(features, patch_size, padding=patch_size // 2 if padded else 0)  # [N, C*s*s, L]
    return cols.view(n, c, patch_size * patch_size, -1).permute(0, 3, 2, 1).reshape(n, cols.shape[-1], -1)


PATCH_GEOMETRIES = [
    pytest.param(2, 3, 7, 9, 3, id="c3-7x9-s3"),
    pytest.param(1, 5, 8, 8, 1, id="c5-8x8-s1"),
    pytest.param(3, 2, 6, 11, 5, id="c2-6x11-s5"),
    pytest.param(1, 4, 5, 5, 5, id="c4-5x5-s5-one-key"),
]


@pytest.mark.parametrize("n,c,h,w,s", PATCH_GEOMETRIES)
def test_extract_patches_matches_unfold(n, c, h, w, s):
    features = torch.randn(n, c, h, w, dtype=torch.float64)
    queries, keys = extract_patches(features, s)
    assert queries.is_contiguous() and keys.is_contiguous()
    assert torch.equal(queries, unfold_rows(features, s, padded=True))
    assert torch.equal(keys, unfold_rows(features, s, padded=False))
    assert torch.equal(key_rows(queries, (h, w), s), keys)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["fp64", "fp32", "bf16", "fp16"])
@pytest.mark.parametrize("n,c,h,w,s", PATCH_GEOMETRIES)
def test_fold_patches_matches_fold_over_counts(n, c, h, w, s, dtype):
    patches = torch.randn(n, h * w, s * s * c, dtype=torch.float64).to(dtype)
    cols = patches.double().view(n, h * w, s * s, c).permute(0, 3, 2, 1).reshape(n, c * s * s, h * w)  # channel-major
    summed = F.fold(cols, (h, w), s, padding=s // 2)
    count = F.fold(torch.ones(1, s * s, h * w, dtype=torch.float64), (h, w), s, padding=s // 2)
    assert torch.equal(patch_counts((h, w), s, torch.float64, "cpu"), count[0, 0])
    folded = fold_patches(patches, (h, w), s)
    assert folded.dtype == dtype
    assert_close(folded, summed / count, dtype, "fold")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("n,c,h,w,s", PATCH_GEOMETRIES)
def test_query_patch_inverse_norms_match_row_norms(n, c, h, w, s, dtype):
    """Box-filter norms == 1 / max(||row||, 1e-6) of the unfolded patches, zero patches included, and
    the gradient stays finite where a patch is zero."""
    features = torch.randn(n, c, h, w, dtype=torch.float64)
    features[:, :, : h // 2] = 0.0  # zero patches (and patches that are partly zero)
    features = features.to(dtype).requires_grad_()
    inv = query_patch_inverse_norms(features, s)
    rows = unfold_rows(features.detach().double(), s, padded=True)
    expected = 1.0 / rows.norm(dim=-1).clamp_min(1e-6)
    assert inv.dtype == dtype
    assert_close(inv / expected, torch.ones_like(expected), dtype, "inverse norms / oracle")
    (inv.clamp(max=10.0) * torch.randn_like(inv)).sum().backward()
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("patch_size", [1, 3], ids=lambda s: f"s{s}")
def test_layer_torch_backend_keeps_the_memory_promise(patch_size):
    """On CPU the layer hands the torch backend unit-stride patches, so it runs PyTorch's fused flash kernel:
    nothing saved for the backward is [B, heads, Nq, Nk] sized (the materialising fallback would save that)."""
    layer = make_layer(torch.float32, in_channels=8, heads=2, patch_size=patch_size, backend="torch")
    b, h, w = 2, 12, 13
    x = torch.randn(b, 8, h, w, requires_grad=True)
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = layer(x, block_mask(b, h, w))
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(n for n, _ in node.next_functions)
    nodes = {type(node).__name__ for node in seen}
    assert any(n.startswith("GeneratedBackwardFor_mhtma_sdpa_cpu_attention") for n in nodes), sorted(nodes)
    nk = (h - patch_size + 1) * (w - patch_size + 1)
    assert max(sizes) < b * 2 * h * w * nk, f"saved a tensor of {max(sizes)} elements"


def test_resize_mask_never_loses_a_hole():
    for (h0, w0), (h, w) in [((37, 41), (9, 10)), ((5, 6), (17, 23)), ((30, 7), (8, 20))]:
        for y, x in [(0, 0), (h0 - 1, w0 - 1), (h0 // 2, w0 // 3), (h0 - 1, 0)]:
            mask = torch.zeros(1, 1, h0, w0)
            mask[0, 0, y, x] = 1
            resized = resize_mask(mask, (h, w))
            assert resized.shape == (1, 1, h, w)
            assert resized.sum() >= 1, f"hole at {(y, x)} of {h0}x{w0} vanished at {h}x{w}"
            assert torch.equal(resized.double(), oracle_resize(mask, h, w))
    assert torch.equal(resize_mask(torch.ones(1, 1, 4, 4, dtype=torch.bool), (2, 2)), torch.ones(1, 1, 2, 2))


def test_bool_mask_same_as_float_mask():
    layer = make_layer(torch.float32, in_channels=4, heads=2, backend="torch")
    x = torch.randn(2, 4, 8, 9)
    mask = block_mask(2, 16, 18)
    assert torch.equal(layer(x, mask), layer(x, mask.bool()))


def test_temperature_network_start_floor_and_leaky():
    net = TemperatureNetwork(6, heads=3)
    x, hole = torch.randn(4, 6, 16, 16), block_mask(4, 16, 16)
    t = net(x, hole)
    assert t.shape == (4, 3)
    assert ((t > 0.08) & (t < 0.12)).all(), t  # starts near 0.1 = 1 / DeepFill's scale 10
    with torch.no_grad():
        net.linear.bias.fill_(-200.0)
    assert torch.equal(net(x, hole), torch.full((4, 3), 1e-4))  # Softplus underflows; the floor holds
    leaky = TemperatureNetwork(6, heads=1, final_activation="leaky_relu", use_mask=False)
    with torch.no_grad():
        leaky.linear.bias.fill_(-5.0)
    assert (leaky(x) < 0).all()  # the ATMA head can go negative
    with pytest.raises(ValueError, match="hole"):
        net(x)
    with pytest.raises(ValueError, match="final_activation"):
        TemperatureNetwork(6, final_activation="relu")


@pytest.mark.parametrize("x_shape,mask_shape,match", [
    ((2, 4, 8), (2, 1, 8, 8), r"x must have shape \[B, 4, H, W\]"),
    ((2, 3, 8, 8), (2, 1, 8, 8), r"x must have shape \[B, 4, H, W\]"),
    ((2, 4, 8, 8), (2, 2, 8, 8), r"mask must have shape \[B, 1, H0, W0\]"),
    ((2, 4, 8, 8), (2, 8, 8), r"mask must have shape"),
    ((2, 4, 8, 8), (3, 1, 8, 8), "batch"),
    ((2, 4, 2, 8), (2, 1, 8, 8), "smaller than patch_size"),
], ids=["x-rank", "x-channels", "mask-channels", "mask-rank", "batch-mismatch", "too-small"])
def test_forward_validation(x_shape, mask_shape, match):
    layer = MaskedTemperatureAttention(4)
    with pytest.raises(ValueError, match=match):
        layer(torch.randn(x_shape), torch.zeros(mask_shape))


def test_forward_type_errors():
    layer = MaskedTemperatureAttention(4)
    with pytest.raises(TypeError, match="mask"):
        layer(torch.randn(1, 4, 8, 8), torch.zeros(1, 1, 8, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="x"):
        layer(torch.ones(1, 4, 8, 8, dtype=torch.int64), torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("kwargs,match", [
    ({"patch_size": 4}, "patch_size"), ({"patch_size": 0}, "patch_size"),
    ({"temperature": 0.0}, "temperature"), ({"temperature": "fixed"}, "temperature"),
    ({"backend": "cuda"}, "backend"), ({"lambda_m": -1.0}, "lambda_m"),
    ({"heads": 0}, "heads"), ({"head_channels": 0}, "head_channels"),
], ids=["even-patch", "zero-patch", "zero-t", "bad-t", "bad-backend", "neg-lambda", "zero-heads", "zero-hc"])
def test_constructor_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskedTemperatureAttention(4, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["auto", "torch"], ids=["cuda-auto-triton", "cuda-torch"])
def test_layer_on_cuda_matches_float64_reference(backend, monkeypatch):
    """On a GPU ("auto" = triton): float32 layer vs the float64 reference layer on the CPU."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.delenv("MHTMA_BACKEND", raising=False)
    ref = make_layer(torch.float64, in_channels=8, heads=2, backend="reference")
    layer = make_layer(torch.float32, in_channels=8, heads=2, backend=backend).cuda()
    layer.load_state_dict(ref.state_dict())
    x64 = torch.randn(3, 8, 16, 15, dtype=torch.float64, requires_grad=True)
    x = x64.detach().float().cuda().requires_grad_()
    mask = block_mask(3, 64, 60)
    out_ref, out = ref(x64, mask), layer(x, mask.cuda())
    assert_close(out.cpu(), out_ref, torch.float32, "cuda output")
    out_ref.sum().backward()
    out.sum().backward()
    assert_close(x.grad.cpu(), x64.grad, torch.float32, "cuda dx")


@pytest.mark.parametrize("temperature", [0.02, 5.0], ids=["t0.02", "t5"])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_layer_at_extreme_fixed_temperatures_matches_the_reference(backend, temperature):
    """A very sharp (1/t = 50: logits up to 50, where an unshifted exp overflows fp16 and the triton forward
    relies on the bound |logit| <= 1/t) and a very flat softmax: the float32 layer on ``backend`` gives the
    float64 reference layer's output and input gradient, zero-feature patches and a hole included."""
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    ref = make_layer(torch.float64, in_channels=4, heads=2, temperature=temperature, backend="reference")
    layer = make_layer(torch.float32, in_channels=4, heads=2, temperature=temperature, backend=backend).to(device)
    layer.load_state_dict(ref.state_dict())
    x64 = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    x64[:, :, :2, :2] = 0  # patches whose features are all zero before the 1x1 embedding's bias
    x64.requires_grad_(True)
    x = x64.detach().float().to(device).requires_grad_()
    mask = block_mask(2, 6, 6)
    out_ref, out = ref(x64, mask), layer(x, mask.to(device))
    assert_close(out.cpu(), out_ref, torch.float32, f"{backend} t={temperature} output")
    out_ref.square().sum().backward()
    out.square().sum().backward()
    assert_close(x.grad.cpu(), x64.grad, torch.float32, f"{backend} t={temperature} dx")
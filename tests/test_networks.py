"""Generator and discriminator: shapes at two sizes for every attention choice, input rules, hole
filling, composite identity, gradients, and the discriminator's hole-containing local crops."""
import pytest
import torch

from mhtma_model.networks import GatedConv2d, GatedDeconv, GlobalLocalDiscriminator, InpaintGenerator, composite

ATTENTION_CASES = [
    pytest.param("mhtma", (2,), id="mhtma"),
    pytest.param("atma", (1,), id="atma"),
    pytest.param("contextual", None, id="contextual"),
    pytest.param("none", None, id="none"),
]
SIZES = [pytest.param(64, id="64px"), pytest.param(96, id="96px")]


def _inputs(batch: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, size, size)
    mask[0, :, size // 4: size // 2, size // 8: size // 2] = 1
    mask[-1, :, size // 2:, size // 2:] = 1
    return image, mask


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("attention, temp_tail", ATTENTION_CASES)
def test_generator_shapes_and_range(attention, temp_tail, size):
    torch.manual_seed(0)
    gen = InpaintGenerator(base_channels=8, attention=attention, heads=2)
    image, mask = _inputs(2, size)
    coarse, refined = gen(image, mask)
    for name, out in (("coarse", coarse), ("refined", refined)):
        assert out.shape == (2, 3, size, size), name
        assert torch.isfinite(out).all(), name
        assert out.abs().max() <= 1.0, name
    if temp_tail is None:
        assert gen.last_temperature is None
    else:
        assert gen.last_temperature.shape == (2, *temp_tail)
        assert not gen.last_temperature.requires_grad


def test_generator_rectangular_and_sketch_channel():
    torch.manual_seed(0)
    gen = InpaintGenerator(base_channels=8, attention="mhtma", sketch=True)
    assert gen.coarse.encoder[0].conv.in_channels == 5
    image, mask = torch.zeros(1, 3, 64, 96), torch.zeros(1, 1, 64, 96)
    mask[..., 10:30, 40:70] = 1
    sketch = torch.zeros(1, 1, 64, 96)
    sketch[..., 20, :] = 1
    coarse, refined = gen(image, mask, sketch)
    assert coarse.shape == refined.shape == (1, 3, 64, 96)
    # the sketch changes the result (it is an input channel inside the hole)
    _, without = gen(image, mask, torch.zeros_like(sketch))
    assert not torch.equal(refined, without)


@pytest.mark.parametrize("height, width", [pytest.param(60, 64, id="H60"), pytest.param(64, 100, id="W100")])
def test_generator_rejects_size_not_multiple_of_8(height, width):
    gen = InpaintGenerator(base_channels=4, attention="none")
    with pytest.raises(ValueError, match=f"{height}x{width}.*divisible by 8"):
        gen(torch.zeros(1, 3, height, width), torch.zeros(1, 1, height, width))


def test_generator_rejects_too_small_for_attention():
    gen = InpaintGenerator(base_channels=4, attention="mhtma")
    assert gen.min_size == 16
    with pytest.raises(ValueError, match="8x8.*at least 16"):
        gen(torch.zeros(1, 3, 8, 8), torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("kwargs, match", [
    pytest.param({"attention": "self"}, "attention must be one of", id="attention"),
    pytest.param({"base_channels": 0}, "base_channels", id="base_channels"),
    pytest.param({"temperature": -1.0}, "temperature", id="temperature"),
    pytest.param({"patch_size": 2}, "patch_size", id="patch_size"),
    pytest.param({"heads": 0}, "heads", id="heads"),
])
def test_generator_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InpaintGenerator(**{"base_channels": 4, **kwargs})


def test_generator_sketch_argument_rules():
    plain = InpaintGenerator(base_channels=4, attention="none")
    guided = InpaintGenerator(base_channels=4, attention="none", sketch=True)
    image, mask = _inputs(1, 16)
    with pytest.raises(ValueError, match="sketch=False"):
        plain(image, mask, torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="sketch=True"):
        guided(image, mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        plain(image, mask[:, :, :8])


def test_generator_ignores_hole_pixels_and_composite_keeps_known_pixels():
    torch.manual_seed(0)
    gen = InpaintGenerator(base_channels=8, attention="mhtma").eval()
    image, mask = _inputs(2, 64)
    scrambled = torch.where(mask.bool(), torch.rand_like(image) * 2 - 1, image)
    with torch.no_grad():
        a = gen(image, mask)
        b = gen(scrambled, mask)
    for x, y in zip(a, b):
        assert torch.equal(x, y), "hole pixels of the input must not influence the output"
    out = composite(a[1], image, mask)
    known = (mask == 0).expand_as(image)
    assert torch.equal(out[known], image[known])
    hole = ~known
    assert torch.equal(out[hole], a[1][hole])


def test_generator_fixed_temperature_has_no_learned_temperature():
    gen = InpaintGenerator(base_channels=4, attention="mhtma", temperature=0.1)
    gen(*_inputs(1, 32))
    assert gen.last_temperature is None
    assert gen.refine.attention.fixed_temperature == pytest.approx(0.1)


def test_generator_gradients_reach_both_stages_and_temperature_network():
    torch.manual_seed(0)
    gen = InpaintGenerator(base_channels=4, attention="mhtma")
    image, mask = _inputs(2, 32)
    coarse, refined = gen(image, mask)
    (coarse.square().mean() + refined.square().mean()).backward()
    groups = {"coarse": gen.coarse, "refine.conv_encoder": gen.refine.conv_encoder,
              "refine.attention_encoder": gen.refine.attention_encoder,
              "temperature network": gen.refine.attention.temperature_net}
    for name, module in groups.items():
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum().item() for g in grads) > 0, name


def test_generator_state_dict_round_trip():
    torch.manual_seed(0)
    a = InpaintGenerator(base_channels=4, attention="mhtma").eval()
    torch.manual_seed(1)
    b = InpaintGenerator(base_channels=4, attention="mhtma").eval()
    b.load_state_dict(a.state_dict())
    image, mask = _inputs(1, 32)
    with torch.no_grad():
        assert torch.equal(a(image, mask)[1], b(image, mask)[1])


def test_gated_layers_shapes():
    x = torch.randn(2, 3, 16, 24)
    assert GatedConv2d(3, 5, 3, stride=2)(x).shape == (2, 5, 8, 12)
    assert GatedConv2d(3, 5, 3, dilation=16)(x).shape == (2, 5, 16, 24)
    assert GatedDeconv(3, 4)(x).shape == (2, 4, 32, 48)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        GatedConv2d(3, 5, 4)


@pytest.mark.parametrize("size, image_size", [
    pytest.param(64, 64, id="64px"),
    pytest.param(128, 128, id="128px"),
    pytest.param(256, 256, id="256px"),
    pytest.param(512, 512, id="512px"),
    pytest.param(96, 64, id="96px-on-64"),
])
def test_discriminator_shapes(size, image_size):
    torch.manual_seed(0)
    disc = GlobalLocalDiscriminator(base_channels=4, image_size=image_size)
    image, mask = _inputs(2, size)
    image.requires_grad_(True)
    scores = disc(image, mask)
    assert scores.shape == (2, 1)
    assert torch.isfinite(scores).all()
    scores.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_discriminator_uses_spectral_norm():
    disc = GlobalLocalDiscriminator(base_channels=4, image_size=64)
    parametrized = [m for m in disc.modules() if hasattr(m, "parametrizations")]
    # 6 global convs + 5 local convs + 2 branch linears + 1 head
    assert len(parametrized) == 14


@pytest.mark.parametrize("seed", [pytest.param(s, id=f"seed{s}") for s in range(3)])
def test_discriminator_crops_contain_hole_pixels(seed):
    torch.manual_seed(seed)
    disc = GlobalLocalDiscriminator(base_channels=4, image_size=64)
    gen = torch.Generator().manual_seed(seed)
    mask = (torch.rand(6, 1, 64, 64, generator=gen) > 0.995).float()  # a few scattered hole pixels
    mask[0] = 0
    mask[0, 0, 63, 0] = 1  # a single hole pixel in the corner: the crop must be clamped, still contain it
    mask[1] = 0  # no hole: any crop inside the image
    boxes = disc.crop_boxes(mask)
    side = disc.local_size
    assert side == 32
    for i, (top, left) in enumerate(boxes.tolist()):
        assert 0 <= top <= 64 - side and 0 <= left <= 64 - side
        if mask[i].sum() > 0:
            assert mask[i, 0, top:top + side, left:left + side].sum() > 0, f"sample {i}: crop misses the hole"
    assert tuple(boxes[0].tolist()) == (64 - side, 0)


def test_discriminator_same_boxes_same_scores_and_bad_input():
    torch.manual_seed(0)
    disc = GlobalLocalDiscriminator(base_channels=4, image_size=64).eval()  # eval: no power iteration
    image, mask = _inputs(2, 64)
    boxes = disc.crop_boxes(mask)
    assert torch.equal(disc(image, mask, boxes), disc(image, mask, boxes))
    with pytest.raises(ValueError, match="smaller than the local crop"):
        disc(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match="mask must be"):
        disc(image, mask[:1])


def test_fresh_generator_output_depends_on_its_input():
    """Regression: with PyTorch's default init the signal vanished through the gated stack (change ~1e-7)."""
    torch.manual_seed(0)
    generator = InpaintGenerator(base_channels=8, attention="none")
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:48, 16:48] = 1
    coarse_a, refined_a = generator(torch.rand(2, 3, 64, 64) * 2 - 1, mask)
    coarse_b, refined_b = generator(torch.rand(2, 3, 64, 64) * 2 - 1, mask)
    assert (coarse_a - coarse_b).abs().max() > 0.1
    assert (refined_a - refined_b).abs().max() > 0.1
    assert coarse_a.abs().max() < 1.0  # not saturated at tanh's ends


def test_spectral_norm_runs_in_fp32_with_autocast_off(monkeypatch):
    """Under autocast (CPU bf16 here; on CUDA torch.mv is on autocast's low-precision list) the power
    iteration and sigma see fp32 tensors with autocast disabled; the scores stay finite."""
    seen = []
    real_mv = torch.mv

    def spy(a, b, *args, **kwargs):
        seen.append((a.dtype, b.dtype, torch.is_autocast_enabled("cpu")))
        return real_mv(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mv", spy)
    torch.manual_seed(0)
    disc = GlobalLocalDiscriminator(base_channels=4, image_size=64)
    image, mask = _inputs(2, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = disc(image, mask)
    assert seen and all(s == (torch.float32, torch.float32, False) for s in seen), seen[:3]
    assert scores.dtype == torch.bfloat16 and torch.isfinite(scores.float()).all()  # the convs did run in bf16


def test_fp32_spectral_norm_keeps_torchs_state_dict_layout():
    """Checkpoints written with torch's spectral_norm load into the fp32 one (same keys, same weight)."""
    from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

    from mhtma_model.networks.discriminator import spectral_norm
    torch.manual_seed(0)
    old = torch_spectral_norm(torch.nn.Linear(6, 5))
    old(torch.randn(3, 6))  # one power iteration: u, v differ from their initial values
    new = spectral_norm(torch.nn.Linear(6, 5))
    new.load_state_dict(old.state_dict(), strict=True)
    old.eval(), new.eval()
    torch.testing.assert_close(new.weight, old.weight)

"""Turn a :class:`~benchmarks.cases.Case` into something to check and to time.

``build(case)`` returns a :class:`Bench` with

- ``run()``   one timed iteration (forward, forward+backward or one training step), ending with a
              CUDA synchronisation on GPU;
- ``check()`` the correctness check run before anything is timed: the result is compared with the
              materialised reference (op: the first batch element and the first 256 query rows
              of the full-size run against float64; backward: q, k, v and temperature gradients on that
              slice; layer: the first two images against a float64 copy of the same layer using the
              reference backend; model: one image against a same-dtype copy whose attention uses the
              reference backend -- for "contextual"/"none" that is a determinism check only; a training
              step must give finite losses and change the weights);
- ``info``    facts recorded with the timing (e.g. FlexAttention's padded head size).

Tolerances come from :mod:`mhtma_kernels.testing`: op and layer outputs use its ``assert_close`` for the
case dtype; gradients and generator outputs its ``assert_normwise_close`` (``|g - g_ref| / |g_ref| <=
max(atol, rtol)`` of that dtype). Layer and model providers come from the registry of attention variants
(:mod:`mhtma_model.networks.attention`).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from mhtma_kernels.testing import assert_close, assert_normwise_close
from mhtma_model.losses import PerceptualLoss, hinge_d_loss, hinge_g_loss
from mhtma_model.networks import GlobalLocalDiscriminator, InpaintGenerator, composite

from . import builders
from .builders import LAYER_PROVIDERS, MODEL_PROVIDERS  # noqa: F401 - the suites' provider lists
from .cases import LAMBDA_M, Case, layer_inputs, model_inputs, op_inputs
from .oracle import GRAD_NAMES, oracle, run_with_grads
from .providers import Unavailable, flex_padded_dim, op_provider
from .timing import synchronize

CHECK_ROWS = 256


@dataclass
class Bench:
    case: Case
    run: Callable[[], object]
    check: Callable[[], None]
    info: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- op


def _op_slice(inputs: dict, rows: int) -> dict:
    return {
        "q": inputs["q"][:1, :, :rows].detach().clone(),
        "k": inputs["k"][:1].detach().clone(),
        "v": inputs["v"][:1].detach().clone(),
        "key_valid": inputs["key_valid"][:1].clone(),
        "temperature": inputs["temperature"][:1].detach().clone(),
    }


def _op_check(case: Case, fn, inputs: dict) -> None:
    dtype = case.torch_dtype
    rows = min(CHECK_ROWS, case.nq)
    part = _op_slice(inputs, rows)
    with torch.no_grad():
        out = fn(**inputs, lambda_m=LAMBDA_M)
    gen = torch.Generator().manual_seed(1)
    dout = torch.randn(out[:1, :, :rows].shape, generator=gen, dtype=torch.float64).to(out.device)
    expected, want = oracle(part, dout)
    assert_close(out[:1, :, :rows], expected, dtype, name=f"{case.id} forward")
    if case.mode != "fwdbwd":
        return
    _, got = run_with_grads(fn, part, dout.to(dtype))
    for name in GRAD_NAMES:
        assert_normwise_close(got[name], want[name], dtype, f"{case.id} d{name}")


def build_op(case: Case) -> Bench:
    inputs = op_inputs(case)
    info = {}
    state = {"fn": op_provider(case.provider, case.device, case.mode)}
    if case.provider == "flex":
        info["flex_padded_d"] = flex_padded_dim(case.d)
        info["flex_temperature"] = "score_mod"
    grad_names = ("q", "k", "v", "temperature")
    if case.mode == "fwdbwd":
        for name in grad_names:
            inputs[name].requires_grad_(True)
        gen = torch.Generator().manual_seed(2)
        dout = torch.randn(case.batch, case.heads, case.nq, case.d, generator=gen).to(case.device, case.torch_dtype)

    def flex_unavailable(error: Exception) -> Unavailable:
        text = str(error).strip()
        return Unavailable(f"FlexAttention cannot run this case: {type(error).__name__}: "
                           f"{text.splitlines()[0][:300] if text else ''}")

    def check():
        try:
            _op_check(case, state["fn"], inputs)
        except AssertionError:
            raise
        except Exception as error:  # noqa: BLE001 - only FlexAttention's own limits are turned into skips
            if case.provider != "flex":
                raise
            if case.mode != "fwdbwd":
                raise flex_unavailable(error) from error
            # Fallback where gradients to a tensor captured by score_mod are unsupported.
            state["fn"] = op_provider("flex", case.device, case.mode, fold_temperature=True)
            info["flex_temperature"] = f"folded into q ({type(error).__name__} with a captured temperature)"
            try:
                _op_check(case, state["fn"], inputs)
            except AssertionError:
                raise
            except Exception as second:  # noqa: BLE001
                raise flex_unavailable(second) from second

    def run():
        fn = state["fn"]
        if case.mode == "fwd":
            with torch.no_grad():
                out = fn(**inputs, lambda_m=LAMBDA_M)
        else:
            out = fn(**inputs, lambda_m=LAMBDA_M)
            out = torch.autograd.grad(out, [inputs[n] for n in grad_names], dout)
        synchronize(case.device)
        return out

    return Bench(case, run, check, info)


# -------------------------------------------------------------------------------------------- layer


def make_layer(case: Case) -> torch.nn.Module:
    """The layer of a layer case (weights seeded), in fp32 on the case device."""
    return builders.make_layer(case.provider, case.d, case.heads, case.device)


def _reference_copy(module: torch.nn.Module, dtype: torch.dtype | None = torch.float64) -> torch.nn.Module:
    """Copy of ``module`` (cast to ``dtype``; None keeps it) whose attention layers use the materialised
    reference backend."""
    ref = copy.deepcopy(module)
    if dtype is not None:
        ref = ref.to(dtype)
    for sub in ref.modules():
        if isinstance(getattr(sub, "backend", None), str):
            sub.backend = "reference"
    return ref


def build_layer(case: Case) -> Bench:
    layer = make_layer(case)
    inputs = layer_inputs(case)
    params = [p for p in layer.parameters() if p.requires_grad]
    if case.mode == "fwdbwd":
        inputs["x"].requires_grad_(True)
        gen = torch.Generator().manual_seed(2)
        dout = torch.randn(inputs["x"].shape, generator=gen).to(case.device)

    def check():
        n = min(2, case.batch)
        with torch.no_grad():
            out = layer(inputs["x"], inputs["mask"])
            ref = _reference_copy(layer)
            expected = ref(inputs["x"][:n].double(), inputs["mask"][:n].double())
        if out.shape != inputs["x"].shape:
            raise AssertionError(f"{case.id}: output shape {tuple(out.shape)} != {tuple(inputs['x'].shape)}")
        assert_close(out[:n], expected, torch.float32, name=f"{case.id} layer output")

    def run():
        if case.mode == "fwd":
            with torch.no_grad():
                out = layer(inputs["x"], inputs["mask"])
        else:
            out = torch.autograd.grad(layer(inputs["x"], inputs["mask"]), [inputs["x"], *params], dout)
        synchronize(case.device)
        return out

    return Bench(case, run, check, {"images_per_step": case.batch})


# -------------------------------------------------------------------------------------------- model


def make_generator(case: Case) -> InpaintGenerator:
    """The generator of a model case (weights seeded), in fp32 on the case device."""
    return builders.make_generator(case.provider, case.d, case.device)


def _train_step_factory(case: Case, generator, inputs):
    """One optimisation step of G and D (hinge loss, docs/design.md §3.3 weights; VGG term if MHTMA_VGG16 is set)."""
    torch.manual_seed(1)
    disc = GlobalLocalDiscriminator(base_channels=case.extra.get("disc_channels", 64),
                                    image_size=case.size).to(case.device)
    opt_g = torch.optim.Adam(generator.parameters(), lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-4, betas=(0.5, 0.9))
    perceptual = None
    if os.environ.get("MHTMA_VGG16"):
        perceptual = PerceptualLoss(os.environ["MHTMA_VGG16"]).to(case.device)
    image, mask = inputs["image"], inputs["mask"]

    def step():
        coarse, refined = generator(image, mask)
        out = composite(refined, image, mask)
        d_loss = hinge_d_loss(disc(image, mask), disc(out.detach(), mask))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = 1.2 * F.l1_loss(coarse, image) + F.l1_loss(out, image) + 0.01 * hinge_g_loss(disc(out, mask))
        if perceptual is not None:
            g_loss = g_loss + 0.004 * perceptual(coarse, image)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        return d_loss.detach(), g_loss.detach()

    return step, perceptual is not None


def build_model(case: Case) -> Bench:
    generator = make_generator(case)
    inputs = model_inputs(case)
    info = {"images_per_step": case.batch}
    if case.mode == "train":
        generator.train()
        step, with_vgg = _train_step_factory(case, generator, inputs)
        info["perceptual_loss"] = with_vgg

        def check():
            before = [p.detach().clone() for p in generator.parameters()]
            losses = step()
            if not all(bool(torch.isfinite(x)) for x in losses):
                raise AssertionError(f"{case.id}: non-finite losses {losses}")
            if all(torch.equal(a, p) for a, p in zip(before, generator.parameters())):
                raise AssertionError(f"{case.id}: one training step left the generator unchanged")

        def run():
            out = step()
            synchronize(case.device)
            return out

        return Bench(case, run, check, info)

    generator.eval()

    def check():
        # Against a copy of the same generator (same dtype and device) whose attention uses the materialised
        # reference backend: a float64 copy would also measure the fp32 rounding that ~30 conv layers
        # accumulate (DeepFill's scale-10 softmax amplifies it), which is not what this check is for.
        with torch.no_grad():
            coarse, refined = generator(inputs["image"], inputs["mask"])
            ref = _reference_copy(generator, dtype=None)
            _, expected = ref(inputs["image"][:1], inputs["mask"][:1])
        if refined.shape != inputs["image"].shape or not bool(torch.isfinite(refined).all()):
            raise AssertionError(f"{case.id}: output shape {tuple(refined.shape)} or non-finite values")
        assert_normwise_close(refined[:1], expected, torch.float32, name=f"{case.id} generator output")

    def run():
        with torch.no_grad():
            out = generator(inputs["image"], inputs["mask"])
        synchronize(case.device)
        return out

    return Bench(case, run, check, info)


def build(case: Case) -> Bench:
    """The :class:`Bench` of any case; raises :class:`Unavailable` when its provider cannot run here."""
    return {"op": build_op, "layer": build_layer, "model": build_model}[case.level](case)

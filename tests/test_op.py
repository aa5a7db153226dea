"""The public op: reference and chunked `torch` backends against a float64 oracle, and input validation.

The Triton backend has its own file (tests/test_op_triton.py) because it runs under the interpreter.
"""
import math

import pytest
import torch

from mhtma_kernels import masked_temperature_attention, masked_temperature_attention_reference
from mhtma_kernels.ops.chunked import gemm as chunked
from mhtma_kernels.ops.sdpa import bias as sdpa
from mhtma_kernels.ops.attention import resolve_backend

from mhtma_kernels.testing import assert_close

# (B, H, Nq, Nk, D, Dv, temperature, key-validity rule, normalize)
CASES = [
    pytest.param(2, 2, 37, 29, 45, 17, 0.1, "random", True, id="odd-D-Nq!=Nk"),
    pytest.param(1, 3, 64, 64, 288, 32, 0.5, "random", True, id="D288-square"),
    pytest.param(3, 1, 20, 50, 7, 5, 1e-2, "random", True, id="tiny-t"),
    pytest.param(2, 2, 19, 23, 16, 16, 1e2, "random", True, id="large-t"),
    pytest.param(2, 2, 30, 25, 12, 9, 0.3, "image1-all-invalid", True, id="all-invalid-image"),
    pytest.param(2, 1, 16, 16, 8, 8, 0.2, "all-valid", True, id="all-valid"),
    pytest.param(2, 2, 21, 17, 10, 6, 0.7, "random", False, id="no-normalize"),
    pytest.param(2, 2, 18, 15, 9, 4, 0.1, "zero-norm", True, id="zero-norm-patches"),
]


def make_inputs(B, H, Nq, Nk, D, Dv, t, rule, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Nq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, H, Nk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, H, Nk, Dv, generator=g, dtype=torch.float64)
    key_valid = torch.rand(B, Nk, generator=g) > 0.4  # a different mask per image
    if rule == "image1-all-invalid":
        key_valid[1] = False
    elif rule == "all-valid":
        key_valid[:] = True
    elif rule == "zero-norm":
        q[:, :, ::3] = 0.0
        k[:, :, ::4] = 0.0
    temperature = t * (1.0 + 0.5 * torch.rand(B, H, generator=g, dtype=torch.float64))
    return [x.to(dtype) for x in (q, k, v)] + [key_valid, temperature.to(dtype)]


def forward_and_grads(backend, q, k, v, key_valid, temperature, normalize=True):
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v, temperature)]
    q, k, v, temperature = leaves
    out = masked_temperature_attention(q, k, v, key_valid, temperature, normalize=normalize, backend=backend)
    # A non-uniform upstream gradient so that every term of the backward matters.
    weight = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weight).sum().backward()
    return [out.detach()] + [x.grad for x in leaves]


NAMES = ("out", "dq", "dk", "dv", "dtemperature")


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("B,H,Nq,Nk,D,Dv,t,rule,normalize", CASES)
def test_backend_matches_float64_reference(backend, B, H, Nq, Nk, D, Dv, t, rule, normalize):
    inputs64 = make_inputs(B, H, Nq, Nk, D, Dv, t, rule)
    expected = forward_and_grads("reference", *inputs64, normalize=normalize)
    actual = forward_and_grads(backend, *make_inputs(B, H, Nq, Nk, D, Dv, t, rule, torch.float32), normalize=normalize)
    for name, a, e in zip(NAMES, actual, expected):
        assert torch.isfinite(a).all(), name
        assert_close(a, e, torch.float32, name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_torch_backend_half_inputs(dtype):
    inputs64 = make_inputs(2, 2, 33, 21, 24, 8, 0.2, "random")
    expected = forward_and_grads("reference", *inputs64)
    actual = forward_and_grads("torch", *make_inputs(2, 2, 33, 21, 24, 8, 0.2, "random", dtype))
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype, name
        assert_close(a, e, dtype, name)


def test_torch_backend_chunks_queries_and_saves_no_score_matrix(monkeypatch):
    """Force many small query chunks (a tiny MHTMA_CHUNK_MB); results stay exact and autograd keeps
    nothing Nq x Nk sized (D != Dv: the torch backend takes the chunked GEMM path)."""
    budget_mb = 2 * 2 * 29 * 5 * 24 / 2 ** 20  # 5 query rows of float64 backward buffers (3 x 8 bytes)
    monkeypatch.setenv("MHTMA_CHUNK_MB", repr(budget_mb))
    assert chunked.chunk_rows(4, 37, 29, 24, chunked.chunk_budget_mb(torch.device("cpu"))) == 5
    inputs = make_inputs(2, 2, 37, 29, 12, 7, 0.1, "random")
    expected = forward_and_grads("reference", *inputs)
    actual = forward_and_grads("torch", *inputs)
    for name, a, e in zip(NAMES, actual, expected):
        assert_close(a, e, torch.float64, name)
    q, k, v, key_valid, temperature = (x.requires_grad_() if x.is_floating_point() else x for x in inputs)
    out = masked_temperature_attention(q, k, v, key_valid, temperature, backend="torch")
    node = out.grad_fn
    while node is not None and not hasattr(node, "saved_tensors"):
        node = node.next_functions[0][0]
    largest = max(t.numel() for t in node.saved_tensors)
    assert largest < 37 * 29 * 2 * 2, f"backward saved a tensor of {largest} elements"


# The two CPU implementations (ops/backends.py): PyTorch's fused CPU flash attention through the additive-bias
# identity (ops/sdpa.py, where D == Dv) and the query-chunked GEMM path (ops/chunked.py, the
# mhtma::chunked_gemm_attention custom op, ops/library.py). backend="auto" restricted to one of them by
# MHTMA_AUTO_CANDIDATES runs exactly that one.
TORCH_PATHS = {"sdpa": "GeneratedBackwardFor_mhtma_sdpa_cpu_attention", "chunked": "GeneratedBackwardFor_mhtma_chunked_gemm_attention"}


@pytest.fixture(params=list(TORCH_PATHS), ids=[f"torch-{p}" for p in TORCH_PATHS])
def torch_path(request, monkeypatch):
    """Selects one implementation (backend="auto" with one candidate); yields the autograd node name that
    proves it ran."""
    monkeypatch.setenv("MHTMA_AUTO_CANDIDATES", request.param)
    return TORCH_PATHS[request.param]


def autograd_node_names(out):
    """Names of every node in the autograd graph of `out`."""
    names, stack, seen = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


def assert_ran(out, node_name):
    names = autograd_node_names(out)
    assert any(n.startswith(node_name) for n in names), f"expected {node_name} in the autograd graph, got {sorted(names)}"
    assert not any("Math" in n or n == "SoftmaxBackward0" for n in names), f"materialising path ran: {sorted(names)}"


# D == Dv (the layer's case, where SDPA applies): (B, H, Nq, Nk, D, temperature, key-validity rule, normalize)
SQUARE_CASES = [
    pytest.param(2, 2, 37, 29, 45, 0.1, "random", True, id="odd-D-Nq!=Nk"),
    pytest.param(1, 2, 40, 36, 288, 0.5, "random", True, id="D288"),
    pytest.param(3, 1, 20, 50, 7, 1e-2, "random", True, id="tiny-t"),
    pytest.param(2, 2, 19, 23, 16, 1e2, "random", True, id="large-t"),
    pytest.param(2, 2, 30, 25, 12, 0.3, "image1-all-invalid", True, id="all-invalid-image"),
    pytest.param(2, 2, 21, 17, 10, 0.7, "random", False, id="no-normalize"),
    pytest.param(2, 2, 18, 15, 9, 0.1, "zero-norm", True, id="zero-norm-patches"),
]


@pytest.mark.parametrize("B,H,Nq,Nk,D,t,rule,normalize", SQUARE_CASES)
def test_torch_paths_match_float64_reference(torch_path, B, H, Nq, Nk, D, t, rule, normalize):
    """Output and the q, k, v, temperature gradients of both torch-backend paths against the float64 oracle."""
    expected = forward_and_grads("reference", *make_inputs(B, H, Nq, Nk, D, D, t, rule), normalize=normalize)
    inputs = make_inputs(B, H, Nq, Nk, D, D, t, rule, torch.float32)
    actual = forward_and_grads("auto", *inputs, normalize=normalize)
    for name, a, e in zip(NAMES, actual, expected):
        assert torch.isfinite(a).all(), name
        assert_close(a, e, torch.float32, name)
    assert_ran(masked_temperature_attention(*[x.requires_grad_() if x.is_floating_point() else x for x in inputs],
                                            normalize=normalize, backend="auto"), torch_path)


@pytest.mark.parametrize("B,H,Nq,Nk,D,t,rule,normalize", SQUARE_CASES)
def test_sdpa_autograd_form_taken_on_cuda_matches_float64_reference(B, H, Nq, Nk, D, t, rule, normalize):
    """The SDPA path's CUDA form (autograd through F.scaled_dot_product_attention on normalised q, k) run on
    CPU, where SDPA's flash kernel takes it: output and every gradient against the float64 oracle."""
    expected = forward_and_grads("reference", *make_inputs(B, H, Nq, Nk, D, D, t, rule), normalize=normalize)
    leaves = [x.requires_grad_() if x.is_floating_point() else x
              for x in make_inputs(B, H, Nq, Nk, D, D, t, rule, torch.float32)]
    q, k, v, key_valid, temperature = leaves
    out = sdpa.sdpa_autograd_attention(q, k, v, key_valid, temperature, 1e4, normalize)
    assert out is not None, "SDPA's fused CPU kernel should take contiguous fp32 inputs"
    weight = torch.linspace(-1.0, 2.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weight).sum().backward()
    for name, a, e in zip(NAMES, [out.detach(), q.grad, k.grad, v.grad, temperature.grad], expected):
        assert_close(a, e, torch.float32, name)


@pytest.mark.parametrize("budget", ["1e-9", "1e4"], ids=["one-slice-per-group", "one-group"])
@pytest.mark.parametrize("rule,normalize", [("random", True), ("image1-all-invalid", True), ("zero-norm", True),
                                            ("random", False)], ids=["random", "all-invalid-image", "zero-norm", "raw"])
def test_cpu_flash_path_groups_of_slices_match_float64_reference(monkeypatch, budget, rule, normalize):
    """The CPU flash path works over groups of (image, head) slices sized to MHTMA_CHUNK_MB: one slice per
    group and everything in one group give the oracle's output and gradients."""
    monkeypatch.setenv("MHTMA_AUTO_CANDIDATES", "sdpa")
    monkeypatch.setenv("MHTMA_CHUNK_MB", budget)
    expected = forward_and_grads("reference", *make_inputs(3, 2, 23, 19, 11, 11, 0.1, rule), normalize=normalize)
    inputs = make_inputs(3, 2, 23, 19, 11, 11, 0.1, rule, torch.float32)
    actual = forward_and_grads("auto", *inputs, normalize=normalize)
    for name, a, e in zip(NAMES, actual, expected):
        assert_close(a, e, torch.float32, name)
    assert_ran(masked_temperature_attention(*[x.requires_grad_() if x.is_floating_point() else x for x in inputs],
                                            normalize=normalize, backend="auto"), TORCH_PATHS["sdpa"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
def test_torch_paths_keep_the_input_dtype(torch_path, dtype):
    """Half inputs compute in float32, float64 in float64; both paths return the input dtype."""
    expected = forward_and_grads("reference", *make_inputs(2, 2, 33, 21, 24, 24, 0.2, "random"))
    inputs = make_inputs(2, 2, 33, 21, 24, 24, 0.2, "random", dtype)
    actual = forward_and_grads("auto", *inputs)
    for name, a, e in zip(NAMES, actual, expected):
        assert a.dtype == dtype, name
        assert_close(a, e, dtype, name)
    assert_ran(masked_temperature_attention(*[x.requires_grad_() if x.is_floating_point() else x for x in inputs],
                                            backend="auto"), torch_path)


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_torch_paths_save_no_score_matrix(torch_path, layout, monkeypatch):
    """Whatever the input strides (the layer hands over transposed unfold views), nothing saved for the
    backward is Nq x Nk sized: the materialising SDPA fallback would save the [B, H, Nq, Nk] weights."""
    monkeypatch.setenv("MHTMA_CHUNK_MB", "0.05")  # a few query rows per chunk
    B, H, Nq, Nk, D = 2, 2, 37, 29, 12
    q, k, v, key_valid, t = make_inputs(B, H, Nq, Nk, D, D, 0.1, "random", torch.float32)
    if layout == "strided":  # unit stride along the patch axis, as in F.unfold(...).transpose(1, 2)
        q, k, v = (x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in (q, k, v))
        assert q.stride(-1) != 1
    leaves = [x.detach().requires_grad_() for x in (q, k, v, t)]
    sizes = []

    def pack(x):
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = masked_temperature_attention(leaves[0], leaves[1], leaves[2], key_valid, leaves[3], backend="auto")
    assert_ran(out, torch_path)
    assert sizes and max(sizes) < B * H * Nq * Nk, f"saved a tensor of {max(sizes)} elements"
    expected = masked_temperature_attention(q.double(), k.double(), v.double(), key_valid, t.double(),
                                            backend="reference")
    assert_close(out, expected, torch.float32, "strided output")


def test_all_invalid_row_gets_uniform_weights():
    q, k, v, key_valid, t = make_inputs(1, 1, 5, 6, 4, 3, 0.05, "random")
    key_valid[:] = False
    for backend in ("reference", "torch"):
        out = masked_temperature_attention(q, k, v, key_valid, t, backend=backend)
        expected = v.mean(dim=2, keepdim=True).expand_as(out)
        assert_close(out, expected, torch.float64, backend)


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_tiny_temperature_one_matching_key_returns_its_value(backend):
    """Property: with t -> 0 and one key equal to the query, the output is that key's value."""
    g = torch.Generator().manual_seed(3)
    k = torch.randn(1, 1, 10, 16, generator=g)
    v = torch.randn(1, 1, 10, 5, generator=g)
    q = k[:, :, [4]] * 3.0  # same direction as key 4, different norm
    key_valid = torch.ones(1, 10, dtype=torch.bool)
    out = masked_temperature_attention(q, k, v, key_valid, torch.full((1, 1), 1e-4), backend=backend)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 4])


def test_invalid_keys_get_no_weight_next_to_valid_ones():
    q, k, v, key_valid, t = make_inputs(2, 2, 9, 12, 6, 12, 1e-2, "random")
    v = torch.eye(12, dtype=torch.float64).expand(2, 2, 12, 12)  # out row = attention weights
    out = masked_temperature_attention(q, k, v, key_valid, t, backend="torch")
    assert out[~key_valid[:, None, None, :].expand_as(out)].abs().max() <= math.exp(-1e4 + 200)
    assert_close(out.sum(-1), torch.ones_like(out.sum(-1)), torch.float64, "rows sum to 1")


def test_auto_backend_and_env_override(monkeypatch):
    monkeypatch.delenv("MHTMA_BACKEND", raising=False)
    assert resolve_backend("auto") == "auto"  # chosen per shape by measurement
    assert resolve_backend("reference") == "reference"
    monkeypatch.setenv("MHTMA_BACKEND", "reference")
    assert resolve_backend("auto") == "reference"
    monkeypatch.setenv("MHTMA_BACKEND", "cuda-magic")
    with pytest.raises(ValueError, match="MHTMA_BACKEND"):
        resolve_backend("auto")


def test_empty_query_set_returns_empty_output():
    q, k, v, key_valid, t = make_inputs(2, 1, 0, 5, 4, 3, 0.1, "random")
    out = masked_temperature_attention(q, k, v, key_valid, t, backend="torch")
    assert out.shape == (2, 1, 0, 3)


def _good():
    return make_inputs(2, 3, 7, 5, 4, 6, 0.1, "random", torch.float32)


def _replace(index, value):
    args = _good()
    args[index] = value
    return args


BAD_INPUTS = [
    pytest.param(_replace(0, torch.randn(3, 7, 4)), {}, ValueError, r"q must have shape \[B, H, Nq, D\]", id="q-rank"),
    pytest.param(_replace(1, torch.randn(2, 3, 5, 5)), {}, ValueError, r"k must have shape .*\[2, 3, Nk, 4\]", id="D-mismatch"),
    pytest.param(_replace(1, torch.randn(1, 3, 5, 4)), {}, ValueError, r"k must have shape", id="B-mismatch"),
    pytest.param(_replace(1, torch.randn(2, 2, 5, 4)), {}, ValueError, r"k must have shape", id="H-mismatch"),
    pytest.param(_replace(2, torch.randn(2, 3, 6, 6)), {}, ValueError, r"v must have shape .*\[2, 3, 5, Dv\]", id="Nk-mismatch"),
    pytest.param(_replace(3, torch.ones(2, 5)), {}, TypeError, r"key_valid must be a bool tensor", id="mask-not-bool"),
    pytest.param(_replace(3, torch.ones(2, 1, 5, dtype=torch.bool)), {}, ValueError, r"key_valid must have shape \[B, Nk\]", id="mask-shape"),
    pytest.param(_replace(3, torch.ones(5, dtype=torch.bool)), {}, ValueError, r"key_valid must have shape", id="mask-no-batch"),
    pytest.param(_replace(4, torch.full((2,), 0.1)), {}, ValueError, r"temperature must have shape \[B, H\]", id="t-shape"),
    pytest.param(_replace(4, torch.full((2, 3), -0.1)), {}, ValueError, r"temperature must be finite and strictly positive", id="t-negative"),
    pytest.param(_replace(4, torch.zeros(2, 3)), {}, ValueError, r"strictly positive", id="t-zero"),
    pytest.param(_replace(4, torch.full((2, 3), float("nan"))), {}, ValueError, r"finite", id="t-nan"),
    pytest.param(_replace(4, torch.full((2, 3), float("inf"))), {}, ValueError, r"finite", id="t-inf"),
    pytest.param(_replace(0, torch.randint(0, 3, (2, 3, 7, 4))), {}, TypeError, r"q must be a floating-point", id="q-int"),
    pytest.param(_replace(2, torch.randn(2, 3, 5, 6, dtype=torch.float64)), {}, TypeError, r"share one dtype", id="dtype-mix"),
    pytest.param(_replace(0, [[1.0]]), {}, TypeError, r"q must be a torch.Tensor", id="q-list"),
    pytest.param(_replace(1, torch.randn(2, 3, 0, 4)), {}, ValueError, r"at least one key", id="no-keys"),
    pytest.param(_good(), {"lambda_m": -1.0}, ValueError, r"lambda_m", id="lambda-negative"),
    pytest.param(_good(), {"lambda_m": float("inf")}, ValueError, r"lambda_m", id="lambda-inf"),
    pytest.param(_good(), {"backend": "cuda"}, ValueError, r"backend must be one of", id="backend-unknown"),
]


@pytest.mark.parametrize("args,kwargs,error,message", BAD_INPUTS)
def test_bad_input_raises_naming_the_argument(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        masked_temperature_attention(*args, **kwargs)


def test_device_mismatch_is_reported():
    args = _good()
    args[4] = args[4].to("meta")
    with pytest.raises(ValueError, match="temperature is on meta"):
        masked_temperature_attention(*args)


def test_reference_is_exported_and_agrees_with_public_function():
    q, k, v, key_valid, t = make_inputs(1, 2, 6, 5, 3, 2, 0.2, "random")
    torch.testing.assert_close(
        masked_temperature_attention_reference(q, k, v, key_valid, t),
        masked_temperature_attention(q, k, v, key_valid, t, backend="reference"),
    )


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_all_invalid_rows_keep_float32_accuracy(backend):
    """Rows whose keys are all invalid sit at z = -1e4; their weights must not lose fp32 precision there.

    (A single saved log-sum-exp of ~-1e4 has a float32 step of ~1e-3 and biased these rows by ~5e-4.)
    """
    inputs = make_inputs(2, 2, 24, 19, 8, 6, 0.3, "image1-all-invalid")
    expected = forward_and_grads("reference", *inputs)
    actual = forward_and_grads(backend, *make_inputs(2, 2, 24, 19, 8, 6, 0.3, "image1-all-invalid", torch.float32))
    for name, a, e in zip(NAMES, actual, expected):
        # image 1 (all keys invalid): uniform weights, exact to float32 rounding
        torch.testing.assert_close(a[1].double(), e[1], atol=2e-6, rtol=2e-6, msg=lambda m: f"{name}: {m}")

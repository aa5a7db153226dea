"""The query-chunked GEMM path: masked temperature attention as batched matrix products over query-row
chunks, never holding the whole Nq x Nk matrix (the `torch` backend's implementation wherever SDPA does
not take the problem, and a backward of the `triton` op).

Works on already-normalised q, k (the public function does the O(N*D) normalisation prepass), flattened
here over batch*heads ("bh"). Per chunk of query rows r (shapes [BH, c, ...], c = rows of the chunk):

    s = q_r k^T                   GEMM, fp32 result   [BH, c, Nk]   (D-wide pass 1)
    z = s / t (valid key),  -lambda_m (invalid key)
    m = 1/t (fixed bound, |s| <= 1) or max_j z (the chunk's own max); an image without a valid key: -lambda_m
    p = exp(z - m),  l = log sum_j p
    out_r = (p @ v) / sum_j p     GEMM                (Dv-wide pass 2)

Backward, from the saved row maxima m (natural base for this module's forward; base 2 for the Triton
forward's row_max2: ``RowStats.base2``); a chunk holds whole rows, so the weights are renormalised there:

    s = q_r k^T                              pass 1 (recomputed)
    p = e / sum_j e,  e = exp(z - m)         (exp2 of the base-2 logits for base-2 statistics)
    dv += p^T dout_r                         pass 2 (fp32 accumulator across chunks)
    dp = dout_r v^T                          pass 3
    delta_i = sum_j p_ij dp_ij               (= <dout_i, out_i>, from the same p)
    g = p (dp - delta), 0 on invalid keys    (an invalid key's logit is a constant)
    dq_r = g k / t                           pass 4
    dk += g^T q_r / t                        pass 5 (fp32 accumulator across chunks)
    dL/dt = -sum_ij g_ij s_ij / t^2          (the sum of today's implementations; torch's cascade sum
                                             over each chunk, in the compute dtype)

Exactly five D-wide GEMM passes, as in the nominal count. m and l are kept apart (not one log-sum-exp):
in a row whose keys are all invalid m = -lambda_m = -1e4, where one fp32 step is ~1e-3; z - m is 0 there.

Precision. GEMM operands are the input dtype where the device multiplies 16-bit operands into fp32
results (CUDA with ``torch.bmm(..., out_dtype=torch.float32)``; feature-detected, see
:func:`gemm_dtype`); elsewhere (CPU, or a torch without it) every operand is cast to the compute dtype
(fp32; fp64 for fp64 inputs, exact for the tests). The scores are never rounded to 16 bits: the
softmax works on fp32 s; p and g are rounded to the input dtype only as operands of the next GEMM,
as the fused kernel does. The elementwise steps between the GEMMs (scale, mask, exp and row sums; w,
delta, g and sum g*s) run, per env ``MHTMA_CHUNK_STEPS`` (see :func:`steps_mode`, :func:`_step`):

* ``triton`` (CUDA's default for fp32 compute): two Triton kernels of ours (:mod:`.row_kernels`),
  one read of s in the forward with the fixed bound (two with the row's own max), two reads of s and dp in
  the backward, e / w / g written once in the GEMM operand dtype; no compile step beyond Triton's JIT;
* ``eager`` (CPU's default; fp64 on CUDA): in-place torch ops on the chunk's buffers;
* ``compile``: pure functions fused by ``torch.compile(dynamic=True)`` (tens of seconds on a first call).

All three compute the same values (tests/test_chunked_kernels.py). A Triton kernel or compiled function
that fails warns once and that step runs eagerly. The GEMMs stay cuBLAS/MKL calls.

Chunks: the rows per chunk are chosen so that the chunk's buffers stay within a memory budget,
``chunk_mb`` (keyword) > env ``MHTMA_CHUNK_MB`` > :data:`..rules.DEFAULT_CHUNK_MB` for the device (CUDA: large
chunks, a few big GEMMs; CPU: about the size of a last-level cache). A value that is not a positive
number is a ValueError naming it. The backward splits the budget: half for the fp32 dk, dv accumulators
of a group of heads (processed one group after the other), half for one chunk of that group's rows, so
that beyond the inputs and the gradients themselves it holds about one budget.
"""
import dataclasses
import os
import warnings
from dataclasses import dataclass

import torch

from ..rules import FIXED_MAX_LIMIT, LOG2E, MAX_BATCH_HEADS, chunk_budget_mb, compute_dtype, on_device
from ..rules import triton_import_error

# Largest 1/t for which the fixed bound m = 1/t replaces the chunk max: rules.FIXED_MAX_LIMIT (a limit on
# log2(e)/t, base 2) in the natural units of this path's scores.
FIXED_INV_T_LIMIT = FIXED_MAX_LIMIT / LOG2E


def chunk_rows(bh: int, nq: int, nk: int, bytes_per_score: int, budget_mb: float) -> int:
    """Query rows per chunk so that bh * rows * nk scores of ``bytes_per_score`` bytes fit in the budget
    (at least 1 row, at most nq)."""
    per_row = max(1, bh * nk * bytes_per_score)
    return max(1, min(nq, int(budget_mb * 2 ** 20) // per_row))


def step_rows(kind: str, bh: int, nq: int, nk: int, acc: torch.dtype, operand: torch.dtype, budget_mb: float) -> int:
    """Query rows per chunk of chunked_forward (``kind`` "forward": s, plus its rounded copy when the GEMM
    operands are 16-bit) or chunked_backward ("backward": s, dp and one more score buffer, plus w and g
    when rounded), for compute dtype ``acc`` and GEMM operand dtype ``operand``."""
    acc_bytes = torch.finfo(acc).bits // 8
    rounded = 0 if operand == acc else torch.finfo(operand).bits // 8
    per_score = acc_bytes + rounded if kind == "forward" else 3 * acc_bytes + 2 * rounded
    return chunk_rows(bh, nq, nk, per_score, budget_mb)


_BMM_OUT_DTYPE: dict = {}


def _bmm_out_dtype_works(device: torch.device) -> bool:
    """Whether torch.bmm(a16, b16, out_dtype=torch.float32) runs on this device (tried once, cached)."""
    key = (device.type, device.index)
    if key not in _BMM_OUT_DTYPE:
        try:
            a = torch.ones(1, 2, 2, dtype=torch.bfloat16, device=device)
            works = torch.bmm(a, a, out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            works = False
        _BMM_OUT_DTYPE[key] = works
    return _BMM_OUT_DTYPE[key]


def gemm_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """Operand dtype of the GEMMs: 16-bit inputs stay 16-bit on CUDA when bmm has fp32 results for them;
    otherwise the compute dtype."""
    if dtype in (torch.float16, torch.bfloat16) and device.type == "cuda" and _bmm_out_dtype_works(device):
        return dtype
    return compute_dtype(dtype)


def _bmm(a: torch.Tensor, b: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """a [N, x, y] @ b [N, y, z] -> [N, x, z] in ``acc`` (fp32 results of 16-bit operands)."""
    if a.dtype == acc:
        return torch.bmm(a, b)
    return torch.bmm(a, b, out_dtype=acc)


_BADDBMM_INTO: dict = {}


def _baddbmm_into_works(device: torch.device) -> bool:
    """Whether torch.baddbmm(acc32, a16, b16, out_dtype=torch.float32, out=acc32) accumulates in place on
    this device: tried once on small tensors and checked against acc + a @ b (cached)."""
    key = (device.type, device.index)
    if key not in _BADDBMM_INTO:
        try:
            g = torch.Generator(device=device).manual_seed(0)
            a = torch.randn(2, 8, 8, generator=g, device=device).to(torch.bfloat16)
            acc = torch.randn(2, 8, 8, generator=g, device=device)
            expected = acc + torch.bmm(a.float(), a.float())
            torch.baddbmm(acc, a, a, out_dtype=torch.float32, out=acc)
            works = bool(torch.allclose(acc, expected, rtol=1e-5, atol=1e-5))
        except (TypeError, RuntimeError, NotImplementedError):
            works = False
        _BADDBMM_INTO[key] = works
    return _BADDBMM_INTO[key]


def _accumulate(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b, acc in the compute dtype: in place where the dtypes agree or where baddbmm writes fp32
    results of 16-bit operands into acc (checked once per device); else through one temporary."""
    if a.dtype == acc.dtype:
        acc.baddbmm_(a, b)
    elif _baddbmm_into_works(acc.device):
        torch.baddbmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.add_(torch.bmm(a, b, out_dtype=acc.dtype))


@dataclass
class RowStats:
    """Per-row softmax statistics [BH, Nq] (compute dtype): p = exp(z - m - l), or in base 2
    p = exp2(z * log2(e) - m - l) for the Triton forward's row_max2, row_log2sum (``base2=True``)."""

    m: torch.Tensor
    l: torch.Tensor
    base2: bool = False


@dataclass
class _Problem:
    """The flattened operands of one call and the constants of the elementwise steps."""

    q: torch.Tensor  # [BH, Nq, D], gemm dtype
    k: torch.Tensor  # [BH, Nk, D]
    v: torch.Tensor  # [BH, Nk, Dv]
    invalid: torch.Tensor  # [BH, 1, Nk] bool
    inv_t: torch.Tensor  # [BH, 1, 1] compute dtype
    lambda_m: float
    acc: torch.dtype  # compute dtype

    @property
    def shape(self):
        return self.q.shape[0], self.q.shape[1], self.k.shape[1]

    def heads(self, heads: slice) -> dict:
        """The per-head fields restricted to ``heads`` (for dataclasses.replace)."""
        return {name: getattr(self, name)[heads] for name in ("q", "k", "v", "invalid", "inv_t")}

    def scores(self, rows: slice) -> torch.Tensor:
        """s = q_r k^T [BH, c, Nk] in the compute dtype (D-wide GEMM pass 1)."""
        return _bmm(self.q[:, rows], self.k.transpose(1, 2), self.acc)


def _problem(q, k, v, key_valid, temperature, lambda_m) -> _Problem:
    B, H, _, _ = q.shape
    operand = gemm_dtype(q.dtype, q.device)
    acc = compute_dtype(q.dtype)
    flat = [x.to(operand).flatten(0, 1) for x in (q, k, v)]
    invalid = (~key_valid)[:, None, None, :].expand(B, H, 1, key_valid.shape[1]).flatten(0, 1)
    inv_t = (1.0 / temperature.detach().to(acc)).reshape(B * H, 1, 1)
    return _Problem(*flat, invalid, inv_t, float(lambda_m), acc)


# ------------------------------------------------------------------------------ elementwise steps
# One chunk's elementwise work between the GEMMs, three ways (env MHTMA_CHUNK_STEPS, see :func:`_step`): our
# Triton kernels (ops/chunked/row_kernels.py; CUDA's default), in place in the chunk's buffers (eager: CPU, and
# every fallback), and pure functions that torch.compile fuses. Shapes: s, dp [BH, c, Nk] in the compute
# dtype; scale [BH, 1, 1]; invalid [BH, 1, Nk]; m [BH, c, 1] (or m_fixed [BH, 1, 1]).

def _forward_rows_eager(s, scale, invalid, fill: float, m_fixed, p_dtype):
    """-> (e = exp(z - m) in p_dtype, m, sum_j e [BH, c, 1]); consumes s."""
    z = s.mul_(scale).masked_fill_(invalid, fill)
    m = m_fixed.expand(z.shape[0], z.shape[1], 1) if m_fixed is not None else z.amax(dim=-1, keepdim=True)
    e = z.sub_(m).exp_()
    return e.to(p_dtype), m, e.sum(dim=-1, keepdim=True)


def _forward_rows_fused(s, scale, invalid, fill: float, m_fixed, p_dtype):
    z = torch.where(invalid, fill, s * scale)
    m = m_fixed.expand(z.shape[0], z.shape[1], 1) if m_fixed is not None else z.amax(dim=-1, keepdim=True)
    e = torch.exp(z - m)
    return e.to(p_dtype), m, e.sum(dim=-1, keepdim=True)


def _backward_rows_eager(s, dp, scale, invalid, fill: float, m, base2: bool, op_dtype):
    """-> (w, g in op_dtype, sum_ij g_ij s_ij [BH]); consumes s and dp. w renormalised per row,
    delta = sum_j w dp, g = w (dp - delta) (0 on invalid keys)."""
    w = (s * scale).masked_fill_(invalid, fill).sub_(m)
    w = w.exp2_() if base2 else w.exp_()
    w.div_(w.sum(dim=-1, keepdim=True))
    delta = w.unsqueeze(-2) @ dp.unsqueeze(-1)  # [BH, c, 1, 1], no temporary
    g = dp.sub_(delta[..., 0]).mul_(w).masked_fill_(invalid, 0.0)
    return w.to(op_dtype), g.to(op_dtype), s.mul_(g).sum(dim=(1, 2))


def _backward_rows_fused(s, dp, scale, invalid, fill: float, m, base2: bool, op_dtype):
    z = torch.where(invalid, fill, s * scale) - m
    e = torch.exp2(z) if base2 else torch.exp(z)
    w = e / e.sum(dim=-1, keepdim=True)
    g = torch.where(invalid, 0.0, w * (dp - (w * dp).sum(dim=-1, keepdim=True)))
    return w.to(op_dtype), g.to(op_dtype), (g * s).sum(dim=(1, 2))


#: Values of env MHTMA_CHUNK_STEPS: how the elementwise row steps run (see :func:`_step`).
STEP_MODES = ("triton", "compile", "eager")
_COMPILED: dict = {}  # step name -> torch.compile'd function
_BROKEN: set = set()  # (mode, step name) that failed once: eager from then on


def _triton_importable() -> bool:
    return triton_import_error() is None


def steps_mode(device: torch.device, dtype: torch.dtype) -> str:
    """How the row steps run for ``device`` and compute ``dtype``: env MHTMA_CHUNK_STEPS (triton | compile |
    eager), else "triton" on CUDA for fp32 where triton is importable, else "eager" (CPU; fp64 on CUDA,
    whose Triton steps are checked under the interpreter only). "triton" on CPU tensors needs
    TRITON_INTERPRET=1. A bad value is a ValueError naming it."""
    env = os.environ.get("MHTMA_CHUNK_STEPS", "").strip()
    if not env:
        wanted = device.type == "cuda" and dtype == torch.float32 and _triton_importable()
        return "triton" if wanted else "eager"
    if env not in STEP_MODES:
        raise ValueError(f"MHTMA_CHUNK_STEPS must be one of {', '.join(STEP_MODES)}, got {env!r}")
    if env == "triton" and not _triton_importable():
        raise ValueError("MHTMA_CHUNK_STEPS=triton, but triton is not installed")
    if env == "triton" and device.type != "cuda":
        from . import row_kernels

        if not row_kernels.interpreting():
            raise ValueError(f"MHTMA_CHUNK_STEPS=triton on {device.type} tensors needs TRITON_INTERPRET=1 "
                             "(set before triton is imported)")
    return env


def _fast_step(mode: str, name: str):
    """The Triton launcher or the torch.compile'd pure function of step ``name``."""
    if mode == "triton":
        from . import row_kernels

        return {"forward": row_kernels.forward_rows, "backward": row_kernels.backward_rows}[name]
    if name not in _COMPILED:
        fused = {"forward": _forward_rows_fused, "backward": _backward_rows_fused}[name]
        _COMPILED[name] = torch.compile(fused, dynamic=True, fullgraph=True)
    return _COMPILED[name]


def _give_up(mode: str, name: str, error: Exception) -> None:
    """Record that step ``name`` failed in ``mode`` (eager from then on) and say so in one warning line."""
    _BROKEN.add((mode, name))
    what = "Triton kernel" if mode == "triton" else "torch.compile'd step"
    warnings.warn(f"mhtma chunked path: the {name} {what} failed "
                  f"({type(error).__name__}: {' '.join(str(error).split())[:160]}); running it eagerly",
                  RuntimeWarning, stacklevel=3)


def _step(name: str, device: torch.device, dtype: torch.dtype):
    """The elementwise step ``name`` ("forward" | "backward") as :func:`steps_mode` says. A Triton kernel
    that fails to import, compile or launch, or a torch.compile that fails, warns once and that step runs
    eagerly from then on (the eager step computes the same; a kernel fails before it writes)."""
    eager = {"forward": _forward_rows_eager, "backward": _backward_rows_eager}[name]
    mode = steps_mode(device, dtype)
    if mode == "eager" or (mode, name) in _BROKEN:
        return eager
    try:
        fast = _fast_step(mode, name)
    except Exception as error:  # noqa: BLE001 - e.g. a triton that does not import: the eager step is exact too
        _give_up(mode, name, error)
        return eager

    def run(s, *args):
        # the row kernels' grid holds B*H on axis 1 (MAX_BATCH_HEADS programs); more is a plain eager step
        if (mode, name) in _BROKEN or (mode == "triton" and s.shape[0] > MAX_BATCH_HEADS):
            return eager(s, *args)
        try:
            with on_device(s):
                return fast(s, *args)
        except Exception as error:  # noqa: BLE001 - any compiler or launch failure: the eager step is exact too
            _give_up(mode, name, error)
            return eager(s, *args)

    return run


def _fixed_bound(p: _Problem, bounded: bool, dtype: torch.dtype):
    """[BH, 1, 1] row max to use instead of the chunk max, or None: 1/t where |s| <= 1 holds, the inputs
    are 16-bit and 1/t is small enough (FIXED_INV_T_LIMIT); -lambda_m for images without a valid key. One
    host read per call.

    Not for fp32/fp64 inputs: the backward recomputes ln p = (z - m) - l, and with m = 1/t the top key's
    ln p carries a rounding error of about ulp(1/t) (~2e-6 at t = 0.04 in fp32) where the chunk max
    gives an exact z - m = 0; that error reaches the temperature gradient (several times a plain fp32
    implementation's error at t ~ 0.05). 16-bit inputs carry far larger errors of their own.

    Not with fp16 GEMM operands (CUDA): e = exp(z - 1/t) is rounded to fp16 for the p @ v GEMM, and where a
    row's best score is well below 1 its weights fall below fp16's normal range (6e-5 = exp(-9.7)), keeping
    a few bits or none (random unit rows at D = 288, t = 0.05: 0.48 of the output's scale wrong). bf16
    has fp32's exponent range; fp16 inputs on CPU multiply fp32 operands."""
    if not bounded or dtype not in (torch.float16, torch.bfloat16) or p.v.dtype == torch.float16:
        return None
    if not bool((p.inv_t <= FIXED_INV_T_LIMIT).all()):
        return None
    any_valid = ~p.invalid.all(dim=-1, keepdim=True)  # [BH, 1, 1]
    return torch.where(any_valid, p.inv_t, torch.full_like(p.inv_t, -p.lambda_m))


def chunked_forward(q, k, v, key_valid, temperature, lambda_m: float, bounded: bool = False, chunk_mb=None,
                    out_dtype: torch.dtype | None = None):
    """Forward on normalised q [B,H,Nq,D], k [B,H,Nk,D], v [B,H,Nk,Dv], key_valid [B,Nk], t [B,H]
    -> (out [B,H,Nq,Dv] in ``out_dtype`` (default the compute dtype; each chunk's rows rounded once when
    written), RowStats in natural base).

    bounded: rows of q and k have norm <= 1, so |s| <= 1 and m = 1/t may replace the chunk max
    (16-bit inputs only, see :func:`_fixed_bound`)."""
    B, H, Nq, _ = q.shape
    p = _problem(q, k, v, key_valid, temperature, lambda_m)
    BH, _, Nk = p.shape
    out = torch.empty(BH, Nq, v.shape[-1], dtype=out_dtype or p.acc, device=q.device)
    m_all = torch.empty(BH, Nq, 1, dtype=p.acc, device=q.device)
    l_all = torch.empty_like(m_all)
    bound = _fixed_bound(p, bounded, q.dtype)
    step = step_rows("forward", BH, Nq, Nk, p.acc, p.q.dtype, chunk_budget_mb(q.device, chunk_mb))
    rows_step = _step("forward", q.device, p.acc)
    for i in range(0, Nq, step):
        rows = slice(i, i + step)
        e, m, total = rows_step(p.scores(rows), p.inv_t, p.invalid, -p.lambda_m, bound, p.v.dtype)
        torch.div(_bmm(e, p.v, p.acc), total, out=out[:, rows])  # D-wide pass 2, rounded to out's dtype
        m_all[:, rows] = m
        torch.log(total, out=l_all[:, rows])
    stats = RowStats(m_all.view(B, H, Nq), l_all.view(B, H, Nq))
    return out.view(B, H, Nq, -1), stats


def head_group(bh: int, nk: int, dk_width: int, acc: torch.dtype, budget_mb: float) -> int:
    """Heads per group of :func:`chunked_backward`: their fp32 dk and dv accumulators (``dk_width`` = D + Dv
    columns per key) take at most half the budget; at least one head."""
    per_head = max(1, nk * dk_width * (torch.finfo(acc).bits // 8))
    return max(1, min(bh, int(budget_mb * 2 ** 19) // per_head))


def chunked_backward(q, k, v, key_valid, temperature, lambda_m: float, stats: RowStats, dout, chunk_mb=None):
    """Backward from the row maxima ``stats.m`` -> (dq, dk, dv in the inputs' dtypes, dt [B, H] in the
    compute dtype). Five D-wide GEMM passes per chunk.

    Memory next to the inputs and the three gradients: the budget (``chunk_mb``), half for the fp32 dk, dv
    accumulators of a group of heads (:func:`head_group`; the group's dk, dv are cast into the outputs
    when its last chunk is done), half for one chunk's score buffers; dq is written per chunk in q's dtype.

    A chunk holds whole rows, so the weights are renormalised there, w = e / sum_j e with e = exp(z - m),
    and delta_i = sum_j w_ij dp_ij is taken from the same w (instead of l and <dout_i, out_i>): the row
    sums of g = w (dp - delta) are then 0 to rounding. A relative error e in l or delta would add about
    e * delta_i * sum_j w_ij (z_ij - m_i) to the temperature gradient, several times a plain fp32
    implementation's error at t >= 1 where that gradient is small."""
    B, H, Nq, D = q.shape
    p = _problem(q, k, v, key_valid, temperature, lambda_m)
    BH, _, Nk = p.shape
    budget = chunk_budget_mb(q.device, chunk_mb)
    grads = [torch.empty(x.shape, dtype=x.dtype, device=x.device).flatten(0, 1) for x in (q, k, v)]
    m = stats.m.to(p.acc).reshape(BH, Nq, 1)
    do = dout.to(p.q.dtype).flatten(0, 1)  # [BH, Nq, Dv]
    g_dot_s = torch.zeros(BH, dtype=p.acc, device=q.device)
    group = head_group(BH, Nk, D + v.shape[-1], p.acc, budget)
    for h0 in range(0, BH, group):
        heads = slice(h0, h0 + group)
        g_dot_s[heads] = _backward_heads(dataclasses.replace(p, **p.heads(heads)), do[heads], m[heads], stats.base2,
                                         [grad[heads] for grad in grads], budget / 2)
    dt = -(g_dot_s.view(BH, 1, 1) * p.inv_t * p.inv_t).reshape(B, H)
    return (*(grad.view(x.shape) for grad, x in zip(grads, (q, k, v))), dt)


def _backward_heads(p: _Problem, do, m, base2: bool, grads, budget_mb: float) -> torch.Tensor:
    """One group of heads: fills its dq, dk, dv (``grads``, the outputs' slices) -> sum_ij g_ij s_ij [G]."""
    G, Nq, Nk = p.shape
    dq, dk_out, dv_out = grads
    scale, fill = (p.inv_t * LOG2E, -p.lambda_m * LOG2E) if base2 else (p.inv_t, -p.lambda_m)
    dk = torch.zeros(G, Nk, p.k.shape[-1], dtype=p.acc, device=do.device)
    dv = torch.zeros(G, Nk, p.v.shape[-1], dtype=p.acc, device=do.device)
    g_dot_s = torch.zeros(G, dtype=p.acc, device=do.device)
    step = step_rows("backward", G, Nq, Nk, p.acc, p.q.dtype, budget_mb)
    rows_step = _step("backward", do.device, p.acc)
    for i in range(0, Nq, step):
        rows = slice(i, i + step)
        s = p.scores(rows)  # pass 1
        dp = _bmm(do[:, rows], p.v.transpose(1, 2), p.acc)  # pass 3, [G, c, Nk]
        w, g, g_s = rows_step(s, dp, scale, p.invalid, fill, m[:, rows], base2, p.q.dtype)
        del s, dp
        _accumulate(dv, w.transpose(1, 2), do[:, rows])  # pass 2
        del w
        torch.mul(_bmm(g, p.k, p.acc), p.inv_t, out=dq[:, rows])  # pass 4, rounded to q's dtype
        _accumulate(dk, g.transpose(1, 2), p.q[:, rows])  # pass 5
        g_dot_s += g_s
    dv_out.copy_(dv)
    del dv  # one fp32 accumulator freed before the other is scaled and cast
    dk_out.copy_(dk.mul_(p.inv_t))
    return g_dot_s

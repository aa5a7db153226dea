"""MHTMA: the multi-head temperature masked self-attention layer (paper Sec. III-C/D, Algorithm 1)."""
import torch
from torch import nn

from ..ops.attention import masked_temperature_attention
from ..ops.checks import backend_from_env, check_backend, check_lambda_m, check_patch_size, check_temperature
from ..ops.tracing import is_exporting
from .patches import (check_feature_size, check_inputs, extract_patches, fold_patches, key_rows, key_validity,
                      query_patch_inverse_norms, resize_mask)
from .temperature import TemperatureNetwork


class MaskedTemperatureAttention(nn.Module):
    r"""Multi-head temperature masked self-attention over feature patches (drop-in ``nn.Module``).

    ``forward(x [B, C, H, W], mask [B, 1, H0, W0]) -> [B, C, H, W]``; mask 1 = hole, any resolution.

    Per head k (all heads in one op call, heads on the op's H axis)::

        Fe_k = Conv1x1_k(x)                                [B, C', H, W]    C' = head_channels
        q_i  = zero-padded s×s patch of Fe_k at pixel i    Nq = H*W,  D = C'*s*s
        k_j  = v_j = unpadded s×s patch j of Fe_k          Nk = (H-s+1)(W-s+1)
        qn_i = q_i / max(|q_i|, eps), kn_j likewise        (norms by a box filter; the op gets normalize=False)
        m'_j = 1 iff window j of resize(mask) has no hole  (paper Eq. 8)
        P_k  = op(qn, kn, v, m', t_k, lambda_m)            softmax_j(<qn_i, kn_j>/t_k | -lambda_m)
        Fr_k = fold(P_k) / fold(1)                         overlapping contributions averaged
        out  = Conv1x1(concat_k Fr_k)                      (identity when heads*C' == C)

    The mask is resized to H×W with nearest upsizing and adaptive max pooling (a hole pixel never
    vanishes). ``t [B, heads]`` comes from :class:`TemperatureNetwork` (``temperature="learned"``)
    or is a fixed positive float (ablation); ``last_temperature`` holds the detached ``[B, heads]``
    values of the last forward.

    Args:
        in_channels: C.
        heads: number of heads K (paper: 2).
        head_channels: C' (default ``max(1, in_channels // heads)``).
        patch_size: odd s (1, 3, 5, ...).
        lambda_m: mask penalty; 1e4 drives every hole key's weight to exactly 0 next to a valid key
            (valid logits lie in [-1/t, 1/t]) while staying finite in fp16/bf16.
        temperature: ``"learned"`` or a positive float.
        backend: op backend, one of ``"auto"``, ``"reference"``, ``"torch"``, ``"triton"``.
        temperature_hidden: width of F_emb's convolutions.
    """

    def __init__(self, in_channels: int, heads: int = 2, head_channels: int | None = None, patch_size: int = 3,
                 lambda_m: float = 1e4, temperature="learned", backend: str = "auto", temperature_hidden: int = 32):
        super().__init__()
        name = type(self).__name__
        for arg, value in (("in_channels", in_channels), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
        if head_channels is None:
            head_channels = max(1, in_channels // heads)
        if isinstance(head_channels, bool) or not isinstance(head_channels, int) or head_channels < 1:
            raise ValueError(f"{name}: head_channels must be a positive int or None, got {head_channels!r}")
        self.patch_size = check_patch_size(patch_size, name)
        temperature = check_temperature(temperature, name)
        self.in_channels, self.heads, self.head_channels = in_channels, heads, head_channels
        self.lambda_m = check_lambda_m(lambda_m, name)
        self.embed = nn.Conv2d(in_channels, heads * head_channels, 1)  # the K channel-wise FC nets F_dr
        self.project = (nn.Conv2d(heads * head_channels, in_channels, 1)
                        if heads * head_channels != in_channels else None)
        self.fixed_temperature = None if temperature == "learned" else temperature
        self.temperature_net = self._make_temperature_net(temperature_hidden) if temperature == "learned" else None
        self.backend = backend  # checked and resolved once (see _resolve_op_backend)
        self.last_temperature: torch.Tensor | None = None

    @property
    def backend(self) -> str:
        """The backend setting (one of the op's BACKENDS); assigning it re-resolves what the op is given."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value, type(self).__name__)
        self._resolve_op_backend()

    def _resolve_op_backend(self) -> None:
        """Fix, once, what each forward hands the op: at construction, on ``.to()`` / ``.cuda()`` and when
        ``backend`` is assigned, never per forward. An explicit backend goes as given; "auto" becomes
        ``MHTMA_BACKEND`` when that is set, else stays "auto" (the op chooses per call)."""
        op_backend = self._backend if self._backend != "auto" else (backend_from_env() or "auto")
        self._op_backend = op_backend

    def _apply(self, fn, *args, **kwargs):
        module = super()._apply(fn, *args, **kwargs)
        self._resolve_op_backend()  # the device may have changed
        return module

    def _make_temperature_net(self, hidden: int) -> nn.Module:
        return TemperatureNetwork(self.in_channels, self.heads, hidden_channels=hidden)

    def extra_repr(self) -> str:
        t = "learned" if self.fixed_temperature is None else self.fixed_temperature
        return (f"in_channels={self.in_channels}, heads={self.heads}, head_channels={self.head_channels}, "
                f"patch_size={self.patch_size}, lambda_m={self.lambda_m:g}, temperature={t}, backend={self.backend!r}")

    def temperature(self, x: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
        """``t [B, heads]`` for ``x [B, C, H, W]`` and the resized hole map ``[B, 1, H, W]``."""
        if self.temperature_net is None:
            return x.new_full((x.shape[0], self.heads), self.fixed_temperature)
        return self.temperature_net(x, hole)

    def attend(self, qn, kn, v, key_valid, t):
        """The masked attention on L2-normalised patches: qn [B,K,Nq,D], kn [B,K,Nk,D], v [B,K,Nk,D],
        key_valid [B,Nk], t [B,K] -> [B,K,Nq,D]. t keeps its dtype: under autocast the patches are
        bf16/fp16 but the learned scale stays fp32.

        The patches are unit vectors, so the op gets normalize=False with unit_norm=True: the fused kernels
        then know every logit is at most 1/t and may skip the running max (docs/kernel-notes.md) without
        normalising a second time. The backend is settled once (:meth:`_resolve_op_backend`), not here."""
        return masked_temperature_attention(qn, kn, v, key_valid, t, lambda_m=self.lambda_m, normalize=False,
                                            backend=self._op_backend, unit_norm=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]``, ``mask [B, 1, H0, W0]`` (1 = hole) -> refined ``[B, C, H, W]``."""
        name = type(self).__name__
        check_inputs(x, mask, self.in_channels, name)
        b, _, h, w = x.shape
        s, heads = self.patch_size, self.heads
        check_feature_size(h, w, s, name)
        hole = resize_mask(mask, (h, w)).to(x.dtype)  # [B, 1, H, W]
        key_valid = key_validity(hole, s)  # [B, Nk]
        t = self.temperature(x, hole)  # [B, heads]
        fe = self.embed(x).view(b * heads, self.head_channels, h, w)
        q, v = extract_patches(fe, s)  # [B*K, Nq, D], [B*K, Nk, D]
        qn = q * query_patch_inverse_norms(fe, s).to(q.dtype)[..., None]
        kn = key_rows(qn, (h, w), s)  # key j is the query centred on j's centre: the same unit vector
        split = (b, heads)
        patches = self.attend(qn.unflatten(0, split), kn.unflatten(0, split), v.unflatten(0, split), key_valid, t)
        out = fold_patches(patches.flatten(0, 1), (h, w), s).reshape(b, heads * self.head_channels, h, w)
        if self.project is not None:
            out = self.project(out)
        if not is_exporting():  # an exported graph has no Python attributes to set (torch.export warns)
            self.last_temperature = t.detach()
        return out

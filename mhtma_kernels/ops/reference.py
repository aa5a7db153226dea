"""The readable oracle: masked temperature attention with the full score matrix materialised.

Shapes: q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv], key_valid [B, Nk] bool,
temperature [B, H] > 0  ->  out [B, H, Nq, Dv].

    qn = q / max(|q|, eps),  kn = k / max(|k|, eps)     (only when normalize=True)
    s  = qn @ kn^T                                       [B, H, Nq, Nk]
    z  = s / t  where the key is valid, -lambda_m elsewhere
    out = softmax(z, dim=-1) @ v

Memory is O(B*H*Nq*Nk): use it to check the other backends, not to train large models.
"""
import torch
import torch.nn.functional as F

EPS = 1e-6


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / max(||x||, EPS) along the last axis; a zero vector stays zero."""
    return F.normalize(x, dim=-1, eps=EPS)


def attention_weights_reference(q, k, key_valid, temperature, lambda_m=1e4, normalize=True):
    """Softmax weights w [B, H, Nq, Nk] of the masked temperature attention (materialised)."""
    if normalize:
        q, k = l2_normalize(q), l2_normalize(k)
    s = q @ k.transpose(-1, -2)
    z = s / temperature[:, :, None, None].to(s.dtype)
    z = torch.where(key_valid[:, None, None, :], z, torch.full_like(z, -lambda_m))
    return torch.softmax(z, dim=-1)


def masked_temperature_attention_reference(q, k, v, key_valid, temperature, lambda_m=1e4, normalize=True):
    """out [B, H, Nq, Dv] = softmax_j(z_ij) v_j, computed the obvious way (see module docstring)."""
    w = attention_weights_reference(q, k, key_valid, temperature, lambda_m, normalize)
    return w @ v

"""Mamba-1 selective scan, `selective_scan_fn` contract: u, delta, z [b, d, l]; A [d, n];
B, C [b, n, l]; D, delta_bias [d]; fp32 state.

When CUDA tensors and mamba-ssm's compiled kernel are both present, the official kernel runs;
otherwise the exact chunked sequential scan of `scan_cpu` (same fp32 recurrence, own backward).
The choice is made per call from the tensors' device and never switches the architecture.
`selective_scan_reference` is the plain per-step recurrence under autograd, which keeps every
step's state: 5-10x slower for training and several GB at Mamba sizes; it stays as the ground
truth of the tests and of launch/bench_scan.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlm_resampler.ops.scan_cpu import selective_scan_cpu


def _official_kernel():
    try:
        from mamba_ssm.ops import selective_scan_interface as ssi
    except ImportError:
        return None
    return ssi.selective_scan_fn if getattr(ssi, "selective_scan_cuda", None) is not None else None


_KERNEL = _official_kernel()


def selective_scan_reference(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    dtype = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    b, d, length = u.shape
    state = u.new_zeros(b, d, A.shape[1])
    A, B, C = A.float(), B.float(), C.float()
    ys = []
    for t in range(length):
        # One step at a time: never materialise a [b, d, l, n] tensor.
        step = torch.exp(delta[:, :, t, None] * A)  # [b, d, n]
        state = step * state + (delta[:, :, t] * u[:, :, t])[:, :, None] * B[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    y = torch.stack(ys, dim=2) + u * D[None, :, None].float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype)


def selective_scan(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True):
    if _KERNEL is not None and u.is_cuda:
        return _KERNEL(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return selective_scan_cpu(u, delta, A, B, C, D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)

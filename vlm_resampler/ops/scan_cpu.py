"""Exact chunked sequential Mamba-1 selective scan for CPU, with a hand-written backward.

Why sequential: on a few CPU cores every parallel scan (Blelloch, Hillis-Steele, log-space
cumsum) moves O(b*d*l*n) data through DRAM, while the plain recurrence can keep its
[b, n, d] state in cache; log-space variants also overflow fp32 at Mamba's A and dt ranges.
The measurements behind these choices are in the project's scan study (shared notes, SCAN.md).

Layout: the state is h [b, n, d] with d innermost, so that the per-step contraction with C is
the fast bmm orientation [b, 1, n] @ [b, n, d]. Inputs are copied time-major once ([l, b, d],
[l, b, n]) so that each step reads contiguous slices.

Memory: the forward keeps only the state at chunk starts (l / chunk states of [b, n, d]);
the backward recomputes one chunk's decays and states at a time (2 * chunk states).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK = 16
# exp2 is about 1.8x faster than exp in torch on CPU; exp(x) = exp2(x * log2(e)).
_LOG2E = 1.0 / math.log(2.0)


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """[b, c, l] -> contiguous [l, b, c]."""
    return x.permute(2, 0, 1).contiguous()


def _step(h, a, delta_t, du_t, B_t, A2):
    """One recurrence step in place: a <- exp(delta_t * A); h <- a * h + B_t (x) du_t."""
    torch.mul(delta_t[:, None, :], A2, out=a)
    a.exp2_()
    h.mul_(a).addcmul_(B_t[:, :, None], du_t[:, None, :])


def _forward_scan(delta, du, A2, B, C, chunk, keep_checkpoints):
    """Time-major inputs; returns y [l, b, d] and the states entering each chunk (None when not kept)."""
    length, batch, dim = delta.shape
    h = delta.new_zeros(batch, A2.shape[0], dim)
    a = torch.empty_like(h)
    y = delta.new_empty(length, batch, 1, dim)
    checkpoints = delta.new_empty(math.ceil(length / chunk), *h.shape) if keep_checkpoints else None
    for t in range(length):
        if keep_checkpoints and t % chunk == 0:
            checkpoints[t // chunk].copy_(h)
        _step(h, a, delta[t], du[t], B[t], A2)
        torch.bmm(C[t][:, None, :], h, out=y[t])
    return y.squeeze(2), checkpoints


def _recompute_chunk(h0, delta, du, A2, B, start, stop, a_buf, h_buf):
    """Fill a_buf[k] = exp(delta_t A) and h_buf[k] = h_t for t = start + k, from the state h0 entering t = start."""
    prev = h0
    for k, t in enumerate(range(start, stop)):
        torch.mul(delta[t][:, None, :], A2, out=a_buf[k])
        a_buf[k].exp2_()
        torch.mul(a_buf[k], prev, out=h_buf[k])
        h_buf[k].addcmul_(B[t][:, :, None], du[t][:, None, :])
        prev = h_buf[k]


class _Grads:
    """Time-major gradient buffers of the scan's inputs."""

    def __init__(self, delta, B, A2):
        self.delta = torch.empty_like(delta)
        self.du = torch.empty_like(delta)
        self.B = torch.empty_like(B)
        self.C = torch.empty_like(B)
        # dA is summed over the batch only once, at the end: per step it is an elementwise accumulate.
        self.A_batch = delta.new_zeros(delta.shape[1], *A2.shape)


def _backward_chunk(g, grads, gy, delta, du, A, B, C, h0, a_buf, h_buf, x, start, stop):
    """Adjoint recurrence over one chunk, in reverse. On entry g = a_{stop} * dL/dh_{stop}
    (the part of dL/dh_{stop-1} that flows through the state); on exit the same for start."""
    for k in reversed(range(stop - start)):
        t = start + k
        g.addcmul_(C[t][:, :, None], gy[t][:, None, :])  # g = dL/dh_t
        torch.bmm(du[t][:, None, :], g.transpose(1, 2), out=grads.B[t][:, None, :])
        torch.bmm(B[t][:, None, :], g, out=grads.du[t][:, None, :])
        g.mul_(a_buf[k])
        # x = dL/d(delta_t * A) elementwise = a_t * dL/dh_t * h_{t-1}.
        torch.mul(g, h_buf[k - 1] if k > 0 else h0, out=x)
        grads.A_batch.addcmul_(x, delta[t][:, None, :])
        x.mul_(A)
        torch.sum(x, dim=1, out=grads.delta[t])
    # dC_t = <gy_t, h_t>_d, batched over the chunk's steps: one bmm instead of one per step.
    steps = stop - start
    hs = h_buf[:steps].flatten(0, 1)
    torch.bmm(
        gy[start:stop].flatten(0, 1)[:, None, :], hs.transpose(1, 2), out=grads.C[start:stop].flatten(0, 1)[:, None, :]
    )


def _backward_scan(gy, delta, du, A, B, C, checkpoints, chunk):
    """Time-major; returns gradients of (delta [via the decay only], du, A [d, n], B, C)."""
    A2 = A.t().mul(_LOG2E).contiguous()
    At = A.t().contiguous()
    length = delta.shape[0]
    grads = _Grads(delta, B, A2)
    g = torch.zeros_like(checkpoints[0])
    a_buf = delta.new_empty(min(chunk, length), *g.shape)
    h_buf = torch.empty_like(a_buf)
    x = torch.empty_like(g)
    for index in reversed(range(len(checkpoints))):
        start, stop = index * chunk, min(length, (index + 1) * chunk)
        h0 = checkpoints[index]
        _recompute_chunk(h0, delta, du, A2, B, start, stop, a_buf, h_buf)
        _backward_chunk(g, grads, gy, delta, du, At, B, C, h0, a_buf, h_buf, x, start, stop)
    grad_A = grads.A_batch.sum(0).t()
    return grads.delta, grads.du, grad_A, grads.B, grads.C


class SelectiveScanCPU(torch.autograd.Function):
    """y[b, d, t] = <h_t, C_t> with h_t = exp(delta_t A) h_{t-1} + B_t du_t; fp32 throughout.

    Takes delta (after bias and softplus) and du = delta * u separately, so that the softplus,
    bias, D skip and z gate stay in plain autograd outside (they are [b, d, l]-sized and cheap).
    """

    @staticmethod
    def forward(ctx, delta, du, A, B, C, chunk):
        delta_t, du_t, B_t, C_t = map(_time_major, (delta, du, B, C))
        A2 = A.t().mul(_LOG2E).contiguous()
        # Under no_grad (inference) nothing is saved, so the chunk states need not be kept either.
        training = any(ctx.needs_input_grad)
        y, checkpoints = _forward_scan(delta_t, du_t, A2, B_t, C_t, chunk, keep_checkpoints=training)
        if training:
            ctx.save_for_backward(delta_t, du_t, A, B_t, C_t, checkpoints)
        ctx.chunk = chunk
        return y.permute(1, 2, 0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        delta_t, du_t, A, B_t, C_t, checkpoints = ctx.saved_tensors
        gy = _time_major(grad_y)
        g_delta, g_du, g_A, g_B, g_C = _backward_scan(gy, delta_t, du_t, A, B_t, C_t, checkpoints, ctx.chunk)
        back = lambda x: x.permute(1, 2, 0)  # noqa: E731  (time-major -> [b, c, l])
        return back(g_delta), back(g_du), g_A, back(g_B), back(g_C), None


def _check_shapes(u, delta, A, B, C):
    b, d, length = u.shape
    n = A.shape[-1]
    if delta.shape != u.shape or A.shape != (d, n) or B.shape != (b, n, length) or C.shape != (b, n, length):
        raise ValueError(
            f"selective scan shapes: u {tuple(u.shape)}, delta {tuple(delta.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}, C {tuple(C.shape)}; expected u, delta [b, d, l], A [d, n], B, C [b, n, l]"
        )


def selective_scan_cpu(u, delta, A, B, C, D, z=None, delta_bias=None, delta_softplus=True, chunk=DEFAULT_CHUNK):
    """Same contract and result as `selective_scan_reference`, computed by the chunked scan."""
    _check_shapes(u, delta, A, B, C)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    dtype = u.dtype
    # fp32 state as the contract says; float64 inputs stay float64 so that gradcheck can run.
    work = torch.promote_types(dtype, torch.float32)
    u, delta = u.to(work), delta.to(work)
    if delta_bias is not None:
        delta = delta + delta_bias[None, :, None].to(work)
    if delta_softplus:
        delta = F.softplus(delta)
    y = SelectiveScanCPU.apply(delta, delta * u, A.to(work), B.to(work), C.to(work), chunk)
    y = y + u * D[None, :, None].to(work)
    if z is not None:
        y = y * F.silu(z.to(work))
    return y.to(dtype)

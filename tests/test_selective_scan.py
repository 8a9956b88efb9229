"""The chunked CPU selective scan equals the per-step reference: outputs and every gradient."""

from __future__ import annotations

import math

import pytest
import torch

from vlm_resampler.ops import selective_scan as scan_module
from vlm_resampler.ops.scan_cpu import selective_scan_cpu
from vlm_resampler.ops.selective_scan import selective_scan, selective_scan_reference
from vlm_resampler.resamplers import bimamba
from vlm_resampler.resamplers.bimamba import BiMambaResampler


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny, so threads gain nothing; on a busy shared machine every parallel
    region can instead wait a whole scheduler slice (~8 ms) for the second thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(b, d, length, n, dtype=torch.float32, seed=0):
    """Mamba-like statistics: S4D-real A, dt in [1e-3, 1e-1] through the softplus bias."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    dt = torch.exp(torch.rand(d, generator=gen, dtype=dtype) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    return {
        "u": randn(b, d, length),
        "delta": 0.5 * randn(b, d, length),
        "A": -torch.arange(1, n + 1, dtype=dtype).repeat(d, 1) * torch.exp(0.2 * randn(d, n)),
        "B": randn(b, n, length),
        "C": randn(b, n, length),
        "D": randn(d),
        "z": randn(b, d, length),
        "delta_bias": dt + torch.log(-torch.expm1(-dt)),
    }


def positive_delta(inputs):
    """Without softplus, delta (+ bias) must stay positive for a decaying, well-conditioned recurrence."""
    inputs["delta"] = inputs["delta"].abs() * 0.1 + 0.05
    inputs["delta_bias"] = inputs["delta_bias"].abs() * 0.01


def call(fn, inputs, use_z, use_bias, softplus, **kw):
    return fn(
        inputs["u"],
        inputs["delta"],
        inputs["A"],
        inputs["B"],
        inputs["C"],
        inputs["D"],
        z=inputs["z"] if use_z else None,
        delta_bias=inputs["delta_bias"] if use_bias else None,
        delta_softplus=softplus,
        **kw,
    )


OPTIONS = [(True, True, True), (False, False, True), (True, False, False), (False, True, False)]


@pytest.mark.parametrize("use_z,use_bias,softplus", OPTIONS)
@pytest.mark.parametrize("length,chunk", [(7, 1), (7, 3), (7, 16), (6, 2), (1, 4)])
def test_gradcheck_float64(length, chunk, use_z, use_bias, softplus):
    inputs = make_inputs(2, 3, length, 2, dtype=torch.float64)
    names = [k for k in NAMES if (use_z or k != "z") and (use_bias or k != "delta_bias")]
    if not softplus:
        positive_delta(inputs)

    def fn(*tensors):
        merged = {**inputs, **dict(zip(names, tensors))}
        return call(selective_scan_cpu, merged, use_z, use_bias, softplus, chunk=chunk)

    tensors = [inputs[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(fn, tensors)


def outputs_and_grads(fn, inputs, use_z=True, use_bias=True, softplus=True, **kw):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y = call(fn, leaves, use_z, use_bias, softplus, **kw)
    grad_y = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    y.backward(grad_y)
    return y.detach(), {k: v.grad for k, v in leaves.items() if v.grad is not None}


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_float32_matches_reference(chunk):
    inputs = make_inputs(3, 64, 50, 16)
    y_ref, g_ref = outputs_and_grads(selective_scan_reference, inputs)
    y, g = outputs_and_grads(selective_scan_cpu, inputs, chunk=chunk)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=0)
    assert g.keys() == g_ref.keys() == set(NAMES)
    for name in NAMES:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-4, rtol=1e-5, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("use_z,use_bias,softplus", OPTIONS[1:])
def test_float32_options_match_reference(use_z, use_bias, softplus):
    inputs = make_inputs(2, 32, 21, 8)
    if not softplus:
        positive_delta(inputs)
    y_ref, g_ref = outputs_and_grads(selective_scan_reference, inputs, use_z, use_bias, softplus)
    y, g = outputs_and_grads(selective_scan_cpu, inputs, use_z, use_bias, softplus, chunk=4)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=0)
    assert g.keys() == g_ref.keys()
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-4, rtol=1e-5)


def test_inference_forward_matches_training_forward():
    inputs = make_inputs(2, 16, 13, 4)
    y_train, _ = outputs_and_grads(selective_scan_cpu, inputs, chunk=4)
    with torch.no_grad():
        y_infer = call(selective_scan_cpu, inputs, True, True, True, chunk=4)
    torch.testing.assert_close(y_infer, y_train, atol=0, rtol=0)


def test_dispatcher_uses_fast_path_on_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(
        scan_module, "selective_scan_cpu", lambda *a, **k: calls.append(1) or selective_scan_cpu(*a, **k)
    )
    inputs = make_inputs(1, 4, 5, 2)
    selective_scan(*(inputs[k] for k in NAMES[:6]), z=inputs["z"])
    assert calls == [1]


def test_low_precision_input_returns_input_dtype():
    inputs = make_inputs(2, 8, 9, 4)
    u = inputs["u"].bfloat16()
    y = selective_scan_cpu(u, inputs["delta"].bfloat16(), inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    y_ref = selective_scan_reference(u, inputs["delta"].bfloat16(), inputs["A"], inputs["B"], inputs["C"], inputs["D"])
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float())


def test_shape_mismatch_is_reported():
    inputs = make_inputs(2, 8, 9, 4)
    with pytest.raises(ValueError, match="expected u, delta"):
        selective_scan_cpu(
            inputs["u"], inputs["delta"], inputs["A"], inputs["C"].transpose(1, 2), inputs["C"], inputs["D"]
        )


def test_bimamba_output_unchanged_by_scan_implementation(monkeypatch):
    torch.manual_seed(0)
    model = BiMambaResampler(
        input_dim=12,
        latent_dimension=10,
        hidden_dim=16,
        depth=2,
        expand=1.5,
        d_state=4,
        d_conv=3,
        use_ln=True,
        dropout=0.0,
        norm_first=True,
    )
    tokens = torch.randn(3, 11, 12)

    def run():
        model.zero_grad()
        out = model(tokens)
        out.square().sum().backward()
        return out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}

    fast_out, fast_grads = run()
    monkeypatch.setattr(bimamba, "selective_scan", selective_scan_reference)
    ref_out, ref_grads = run()
    torch.testing.assert_close(fast_out, ref_out, atol=1e-5, rtol=1e-5)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")

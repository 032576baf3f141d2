"""recc.compile: call convention, dtypes, heads, states, autograd, errors."""

from __future__ import annotations

import pytest
import torch

import recc
from recc import RecError

MINGRU = """
# minGRU
recurrence mingru {
  dims D
  input k[D], v[D]
  state h[D] = 0
  let z = sigmoid(k)
  update h = (1 - z) * h + z * v
  output h
}
"""

TWO = """
recurrence two {
  dims D, N
  input x[D], b[N]
  param a[D], w[D, N]
  state h[D] = 0
  state c[D, N] = 1
  update h = sigmoid(a) * h + x
  update c = exp(-softplus(w)) * c + outer(x, b)
  output y = h + c @ b
  output h2 = h * 2
}
"""


def loop_mingru(k, v, h0):
    """What a user would write: the reference loop, in plain torch."""
    h, outs = h0, []
    for t in range(k.shape[1]):
        z = torch.sigmoid(k[:, t])
        h = (1 - z) * h + z * v[:, t]
        outs.append(h)
    return torch.stack(outs, 1), h


def test_compile_from_text_and_path(tmp_path):
    path = tmp_path / "mingru.rec"
    path.write_text(MINGRU)
    for source in (MINGRU, str(path), path):
        fn = recc.compile(source)
        assert fn.spec.name == "mingru"
        assert "class: diagonal" in fn.explain()
        assert fn.analysis.kind == "diagonal"


def test_matches_a_loop_with_state_in_and_out():
    fn = recc.compile(MINGRU)
    k, v = torch.randn(3, 17, 5, dtype=torch.float64), torch.randn(3, 17, 5, dtype=torch.float64)
    h0 = torch.randn(3, 5, dtype=torch.float64)
    y, last = fn(k=k, v=v, initial_state=h0, output_final_state=True)
    y_ref, last_ref = loop_mingru(k, v, h0)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-14)
    torch.testing.assert_close(last, last_ref, rtol=0, atol=1e-14)
    # the same through the dict form of initial_state
    y2 = fn(k=k, v=v, initial_state={"h": h0})
    torch.testing.assert_close(y2, y_ref, rtol=0, atol=1e-14)


def test_several_outputs_and_states_come_back_as_tuples():
    fn = recc.compile(TWO)
    x, b = torch.randn(2, 4, 3), torch.randn(2, 4, 2)
    a, w = torch.randn(3), torch.randn(3, 2)
    (y, h2), (h, c) = fn(x=x, b=b, a=a, w=w, output_final_state=True)
    assert y.shape == (2, 4, 3) and h2.shape == (2, 4, 3)
    assert h.shape == (2, 3) and c.shape == (2, 3, 2)
    torch.testing.assert_close(h2[:, -1], 2 * h)


def test_heads_with_shared_and_per_head_params():
    fn = recc.compile(TWO)
    B, T, H = 2, 5, 4
    x, b = (
        torch.randn(B, T, H, 3, dtype=torch.float64),
        torch.randn(B, T, H, 2, dtype=torch.float64),
    )
    a, w = torch.randn(H, 3, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    (y, _), (h, c) = fn(x=x, b=b, a=a, w=w, output_final_state=True)
    assert y.shape == (B, T, H, 3) and c.shape == (B, H, 3, 2)
    for head in range(H):
        (yh, _), _ = fn(x=x[:, :, head], b=b[:, :, head], a=a[head], w=w, output_final_state=True)
        torch.testing.assert_close(y[:, :, head], yh, rtol=0, atol=1e-14)


def test_bf16_inputs_accumulate_in_fp32():
    fn = recc.compile(MINGRU)
    k, v = torch.randn(2, 64, 8).bfloat16(), torch.randn(2, 64, 8).bfloat16()
    y, last = fn(k=k, v=v, output_final_state=True)
    assert y.dtype == torch.bfloat16 and last.dtype == torch.float32
    y_ref, last_ref = loop_mingru(k.double(), v.double(), torch.zeros(2, 8, dtype=torch.float64))
    torch.testing.assert_close(last.double(), last_ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-2, atol=1e-2)  # bf16 output rounding


def test_non_contiguous_inputs():
    fn = recc.compile(MINGRU)
    k = torch.randn(9, 2, 4).transpose(0, 1)  # [2, 9, 4], not contiguous
    v = torch.randn(2, 4, 9).transpose(1, 2)
    assert not k.is_contiguous() and not v.is_contiguous()
    torch.testing.assert_close(fn(k=k, v=v), fn(k=k.contiguous(), v=v.contiguous()))


def test_zero_length_sequence():
    fn = recc.compile(MINGRU)
    h0 = torch.randn(2, 4)
    y, last = fn(
        k=torch.randn(2, 0, 4), v=torch.randn(2, 0, 4), initial_state=h0, output_final_state=True
    )
    assert y.shape == (2, 0, 4)
    torch.testing.assert_close(last, h0)


def test_gradients_to_inputs_params_and_initial_state():
    fn = recc.compile(TWO)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(2, 4, 2, dtype=torch.float64, generator=g, requires_grad=True)
    a = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(3, 2, dtype=torch.float64, generator=g, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    c0 = torch.randn(2, 3, 2, dtype=torch.float64, generator=g, requires_grad=True)

    def f(x, b, a, w, h0, c0):
        (y, h2), (h, c) = fn(x=x, b=b, a=a, w=w, initial_state=(h0, c0), output_final_state=True)
        return y, h2, h, c

    assert torch.autograd.gradcheck(f, (x, b, a, w, h0, c0))


def test_unknown_backend_and_positional_arguments():
    with pytest.raises(RecError, match="unknown backend 'cuda'"):
        recc.compile(MINGRU, backend="cuda")
    fn = recc.compile(MINGRU)
    with pytest.raises(RecError, match="pass tensors by name"):
        fn(torch.randn(1, 2, 3))


def test_call_errors_name_the_tensor():
    fn = recc.compile(MINGRU)
    k = torch.randn(2, 5, 4)
    with pytest.raises(RecError, match="missing input 'v'"):
        fn(k=k)
    with pytest.raises(RecError, match=r"input 'v' has shape \[2, 5, 3\]|v' has D=3"):
        fn(k=k, v=torch.randn(2, 5, 3))
    bad = k.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(RecError, match="input 'k' contains NaN"):
        fn(k=bad, v=k)
    with pytest.raises(RecError, match="initial state 'h' has shape"):
        fn(k=k, v=k, initial_state=torch.zeros(3, 4))


def test_inf_is_allowed_and_propagates_as_documented():
    fn = recc.compile(MINGRU)
    k = torch.zeros(1, 3, 2)
    v = torch.tensor([[[1.0, float("inf")]] * 3])
    y = fn(k=k, v=v)
    assert torch.isinf(y[..., 1]).all() and torch.isfinite(y[..., 0]).all()


def test_nan_propagates_when_the_check_is_off():
    fn = recc.compile(MINGRU)
    k = torch.zeros(1, 4, 2)
    v = torch.ones(1, 4, 2)
    v[0, 2, 0] = float("nan")
    y = fn(k=k, v=v, check_nan=False)
    assert torch.isnan(y[0, 2:, 0]).all() and not torch.isnan(y[0, :2]).any()
    assert not torch.isnan(y[0, :, 1]).any()


def test_max_and_min_route_ties_to_the_first_argument():
    fn = recc.compile(
        "recurrence m { dims D\n input a[D], b[D]\n state h[D] = 0\n"
        " update h = max(min(h, a), b)\n output h }"
    )
    for backend in ("interpreter", "torch"):
        g = recc.compile(fn.spec.source, backend=backend)
        a = torch.tensor([[[1.0], [1.0]]], requires_grad=True)  # ties: h == a at t = 1
        b = torch.tensor([[[1.0], [0.0]]], requires_grad=True)  # ties: min(h, a) == b at t = 0
        h0 = torch.tensor([[2.0]], requires_grad=True)
        y = g(a=a, b=b, initial_state=h0)
        y.sum().backward()
        # t=0: min(2, 1) = 1 (a), max(1, b=1) tie -> first (the min) -> a[0]
        # t=1: min(h=1, a=1) tie -> first (h) -> ... -> a[0]; max(1, 0) -> the min
        assert y.flatten().tolist() == [1.0, 1.0]
        assert a.grad.flatten().tolist() == [2.0, 0.0], backend
        assert b.grad.flatten().tolist() == [0.0, 0.0], backend
        assert h0.grad.flatten().tolist() == [0.0], backend


def test_minmax_gradients_route_as_the_spec_writes_them():
    # max(min(h, a), b) with a = [1, -1], b = [1, 1] from h0 = 0: at t = 1 min(h=1, a=-1)
    # is -1 and max(-1, b=1) is b, with no tie in the spec as written; the canonical
    # form's a' = max(a, b) = 1 ties with h = 1 and had routed d h_1 / d b to b_0.
    spec = (
        "recurrence m { dims D\n input a[D], b[D]\n state h[D] = 0\n"
        " update h = max(min(h, a), b)\n output h }"
    )
    for backend in ("interpreter", "torch", "triton"):
        fn = recc.compile(spec, backend=backend)
        a = torch.tensor([[[1.0], [-1.0]]], requires_grad=True)
        b = torch.tensor([[[1.0], [1.0]]], requires_grad=True)
        y = fn(a=a, b=b)
        (grad_b,) = torch.autograd.grad(y[0, 1, 0], [b])
        assert y.flatten().tolist() == [1.0, 1.0], backend
        assert grad_b.flatten().tolist() == [0.0, 1.0], backend


def test_an_absent_coefficient_multiplies_nothing():
    # h' = max(xa, xb) reads no state: from h0 = -inf, a materialised 0 * h0 was NaN;
    # and h' = sqrt(x) with one negative x is NaN at that step only.
    spec = (
        "recurrence r { dims D\n input xa[D], xb[D]\n state h[D] = -inf\n"
        " update h = %s\n output h }"
    )
    for backend in ("torch", "triton"):
        fn = recc.compile(spec % "max(xa, xb)", backend=backend)
        x = torch.randn(2, 7, 3, dtype=torch.float64)
        torch.testing.assert_close(fn(xa=x, xb=x * 0.5), torch.maximum(x, x * 0.5))
        fn = recc.compile(spec.replace("-inf", "0") % "sqrt(xa) + xb", backend=backend)
        xa = torch.rand(1, 7, 2, dtype=torch.float64)
        xa[0, 2, 0] = -1.0
        y = fn(xa=xa, xb=torch.zeros_like(xa), check_nan=False)
        assert torch.isnan(y).sum() == 1 and torch.isnan(y[0, 2, 0]), backend


def test_call_flags_must_be_booleans():
    fn = recc.compile(MINGRU)
    k = torch.randn(1, 3, 2)
    for flag in ("output_final_state", "check_nan"):
        with pytest.raises(RecError, match=f"{flag} must be True or False"):
            fn(k=k, v=k, **{flag: "no"})


def test_meta_tensors_give_shapes():
    fn = recc.compile(MINGRU)
    k = torch.empty(2, 5, 4, device="meta")
    y, h = fn(k=k, v=k, output_final_state=True)
    assert y.device.type == "meta" and y.shape == (2, 5, 4) and h.shape == (2, 4)


def test_sparse_tensors_are_a_rec_error():
    fn = recc.compile(MINGRU)
    k = torch.randn(1, 3, 2)
    with pytest.raises(RecError, match="sparse_coo tensor; recc takes dense"):
        fn(k=k.to_sparse(), v=k)


def test_a_wide_initial_state_computes_in_fp64():
    # fp32 inputs with an fp64 initial state: computed in fp64 (documented), outputs in fp32
    fn = recc.compile(MINGRU)
    k = torch.zeros(1, 3, 1)
    v = torch.zeros(1, 3, 1)
    h0 = torch.full((1, 1), 1.0 + 2.0**-40, dtype=torch.float64)
    y, h = fn(k=k, v=v, initial_state=h0, output_final_state=True)
    assert y.dtype == torch.float32 and h.dtype == torch.float64
    assert h.item() == (1.0 + 2.0**-40) * 0.5**3  # fp32 would have rounded the 2^-40 away


def test_infinite_start_of_a_linear_recurrence_is_a_rec_error():
    fn = recc.compile(MINGRU)
    k = torch.randn(1, 3, 2)
    with pytest.raises(RecError, match="contains inf, and this recurrence is linear"):
        fn(k=k, v=k, initial_state=torch.full((1, 2), float("inf")))
    with pytest.raises(RecError, match="starts at inf, but its recurrence is diagonal"):
        recc.compile(MINGRU.replace("state h[D] = 0", "state h[D] = inf"))
    # MinMax recurrences start at +-inf by design
    maxplus = recc.compile(
        "recurrence m { dims D\n input a[D], b[D]\n state h[D] = -inf\n"
        " update h = max(h + a, b)\n output h }"
    )
    y = maxplus(a=k, b=k, initial_state=torch.full((1, 2), float("inf")))
    assert torch.isinf(y).all()

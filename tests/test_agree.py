"""recc.testing.agree: the comparison `recc check`, the property tests and the fuzz
campaign share. It must report every real difference, and no difference that IEEE
arithmetic leaves open (overflow, NaN results, singular derivatives)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recc.analysis import analyze
from recc.backends.protocol import Options
from recc.interpreter import run as interpreter_run
from recc.ir import load
from recc.signature import bind
from recc.testing.agree import compare, disagreements
from recc.verify import check, random_call

NAN, INF = float("nan"), float("inf")


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_values_compare_nan_and_inf_positions_exactly():
    assert compare("output y", t(1.0, INF), t(1.0, INF), 1e-10) is None
    assert compare("output y", t(1.0, INF), t(1.0, NAN), 1e-10) is not None
    assert compare("output y", t(1.0, INF), t(1.0, -INF), 1e-10) is not None
    assert compare("output y", t(NAN, 2.0), t(NAN, 2.0), 1e-10) is None
    assert compare("output y", t(NAN, 2.0), t(0.0, 2.0), 1e-10) is not None
    assert compare("output y", t(1.0, 2.0), t(1.0, 2.0 + 1e-6), 1e-10) is not None


def test_a_singular_gradient_is_inf_or_nan_but_never_finite():
    # sum_t r_t * inf is NaN when signs mix; inf * sum_t r_t is +-inf
    assert compare("gradient of W", t(NAN, 1.0), t(INF, 1.0), 1e-10, singular=True) is None
    assert compare("gradient of W", t(-INF, 1.0), t(NAN, 1.0), 1e-10, singular=True) is None
    assert compare("gradient of W", t(NAN, 1.0), t(0.0, 1.0), 1e-10, singular=True) is not None
    assert compare("gradient of W", t(INF, 1.0), t(-INF, 1.0), 1e-10, singular=True) is not None
    assert compare("gradient of W", t(INF, 1.0), t(5.0, 1.0), 1e-10, singular=True) is not None


def _spec(body: str, dims: str = "D, N") -> str:
    return f"recurrence r {{\n  dims {dims}\n{body}\n}}\n"


# Found by benchmarks/fuzz.py: each agreed on every value the interpreter could
# define, and `recc check` called them mismatches.
OPEN_BY_IEEE = {
    # exp(2023 * A) overflows from finite inputs in the positive regime: past the
    # overflow the scan's gradients are NaN where the loop's are inf
    "overflow": _spec(
        "  input u[D], delta[D], Bt[N], Ct[N]\n  param A[D, N], bias[D]\n"
        "  state h[D, N] = 0\n  let dsp = softplus(2023 + bias)\n"
        "  update h = exp(dsp * A) * h + outer(dsp * u, Bt)\n  output y = h @ Ct"
    ),
    # o reads h / h at h = 0 (NaN); the loss is NaN, and 0 * NaN reaches h0 through
    # d(h - h)/dh = 1 - 1 in the loop's graph, which the form does not have
    "nan_output": _spec(
        "  input x[D]\n  state h[D] = 0\n  update h = h - h\n  output o = x - h / h", "D"
    ),
}


def test_what_ieee_leaves_open_is_not_a_mismatch():
    for name, source in OPEN_BY_IEEE.items():
        result = check(load(source), backends=("torch",))
        assert "torch" in result.checked
        assert result.ok, (name, [str(f) for f in result.failures])


def test_a_real_difference_after_a_nan_output_is_still_found():
    # the values are compared exactly even when gradients are not: a backend that
    # made every step after a NaN NaN (issue 6, item 2) is still caught
    got = t(1.0, NAN, 3.0)
    assert compare("output h", t(1.0, NAN, 3.0), got, 1e-10) is None
    assert compare("output h", t(1.0, NAN, 3.0), t(1.0, NAN, NAN), 1e-10) is not None


# --- the narrower checks tests ask for: each only adds to the default one ----------------

MINGRU = Path(__file__).resolve().parent.parent / "specs" / "mingru.rec"


def _mingru_call(T: int = 7):
    rec = load(MINGRU)
    tensors, init = random_call(rec, positive=True, T=T, seed=2)
    return rec, analyze(rec), tensors, init


def test_elementwise_holds_small_values_to_their_own_size():
    ref, got = t(1000.0, 1e-3), t(1000.0, 1e-3 + 1e-9)
    assert compare("output y", ref, got, 1e-10) is None  # 1e-9 is within 1e-10 * 1000
    d = compare("output y", ref, got, 1e-10, elementwise=(1e-10, 1e-12))
    assert d is not None and "at [1]" in d.detail and "rtol 1e-10" in d.detail
    # ...and never passes what the normwise check fails
    far = t(1000.0, 1e-3 + 1e-6)
    assert compare("output y", ref, far, 1e-10, elementwise=(1.0, 1.0)) is not None
    # atol 0 at a zero reference: exact
    assert compare("output y", t(0.0, 1.0), t(0.0, 1.0), 1e-10, elementwise=(0, 0)) is None
    assert compare("output y", t(0.0), t(1e-300), 1e-10, elementwise=(1e-10, 0)) is not None


def test_a_different_dtype_is_a_disagreement():
    d = compare("output y", t(1.0), t(1.0).float(), 1e-5)
    assert d is not None and "dtype torch.float32" in d.detail


def test_a_tolerance_can_only_be_tighter():
    rec, analysis, tensors, init = _mingru_call()
    assert disagreements(rec, analysis, "torch", tensors, init, tolerance=1e-12) == []
    with pytest.raises(ValueError, match="looser than agree's 1e-10"):
        disagreements(rec, analysis, "torch", tensors, init, tolerance=1e-9)


def test_a_callable_executor_and_values_only():
    rec, analysis, tensors, init = _mingru_call()
    calls = []

    def loop(given, start):  # the interpreter itself, by hand: agrees exactly
        calls.append(sorted(given))
        return interpreter_run(rec, bind(rec, given, start))

    assert disagreements(rec, analysis, loop, tensors, init, elementwise=(0, 0)) == []
    assert calls == [sorted(tensors)]

    def off(given, start):  # one value wrong by 1e-9
        outputs, finals = interpreter_run(rec, bind(rec, given, start))
        return {k: v + 1e-9 for k, v in outputs.items()}, finals

    found = disagreements(rec, analysis, off, tensors, init, gradients=False)
    assert [d.what for d in found] == ["output h"]
    # values only: no gradient is taken (the executor's results need not be differentiable)
    detached = disagreements(
        rec,
        analysis,
        lambda g, s: tuple({k: v.detach() for k, v in d.items()} for d in loop(g, s)),
        tensors,
        init,
        gradients=False,
    )
    assert detached == []


def test_an_executor_missing_a_result_disagrees():
    rec, analysis, tensors, init = _mingru_call()

    def no_finals(given, start):
        return interpreter_run(rec, bind(rec, given, start))[0], {}

    found = disagreements(rec, analysis, no_finals, tensors, init)
    assert [d.what for d in found] == ["results"] and "final state h" in found[0].detail


def test_finite_makes_an_open_result_a_disagreement():
    rec = load(OPEN_BY_IEEE["nan_output"])
    analysis = analyze(rec)
    tensors = {"x": torch.randn(1, 3, 2, dtype=torch.float64)}
    assert disagreements(rec, analysis, "torch", tensors, {}) == []  # IEEE leaves it open
    found = disagreements(rec, analysis, "torch", tensors, {}, finite=True)
    assert found and all("not finite" in d.detail for d in found)
    assert "output o" in [d.what for d in found]


def test_options_reach_the_named_backend_only():
    rec, analysis, tensors, init = _mingru_call()
    assert disagreements(rec, analysis, "torch", tensors, init, options=Options()) == []
    with pytest.raises(ValueError, match="options= applies to a named backend"):
        disagreements(rec, analysis, "auto", tensors, init, options=Options())


# Drawn by tests/test_chunkwise.py's DPLR property test (saturating regime, T=37): the
# low-rank part is large, the maps expansive and non-normal, the state 1e131 at the end;
# a one-ulp change of the inputs moves the loop's own output by ~1e-9 relative.
EXPANSIVE_DPLR = """recurrence r {
  dims K, V
  input r[K], x8, a[V], x7, c[K], q[K], b[V]
  state S[V, K] = 0.25
  let g9 = softplus(exp(-1) * x8)
  let g10 = (x8 + 3.5) * (-x8)
  let decay = sqrt(sigmoid(g9 * g10)) / (1 + 1 / (1 + exp(g10 - g9)))
  let w = -(sqrt(sigmoid(0.5 * x7)) * sigmoid(r))
  update S = S * decay + outer(S @ c, -c) + outer(S @ r, w) + outer(a, c) + x7 * outer(b, r)
  output o = S @ q
}
"""


def test_well_conditioned_tells_an_undetermined_call_from_a_determined_one():
    from recc.testing.agree import interpreter_results, well_conditioned
    from recc.testing.regimes import NORMAL, SATURATING

    rec = load(EXPANSIVE_DPLR)
    a = analyze(rec)
    for regime, seed, T, expected in ((SATURATING, 287, 37, False), (NORMAL, 1, 37, True)):
        tensors, init = regime.call(rec, T, seed=seed, heads=2)
        reference = interpreter_results(rec, a, tensors, init, seed)
        assert well_conditioned(rec, a, tensors, init, reference, seed) is expected, regime.name


# Drawn by tests/test_backend_properties.py (saturating regime, T=5, seed 2087): at
# step 3 max(h + a, c) ties exactly in the loop's order (h = c + x, a = -x), while
# Triton's tanh differs from torch's by one ulp in c, so the two route the gradient of
# lambda differently (-0.19 against 0).
ROUNDING_TIE = """recurrence update_rule {
  dims D
  input H[D], lambda, _log1p[D]
  state torch[D] = -inf
  let _log_sigmoid = 0.5 * (0.9 * lambda) + tanh(lambda * H)
  let exp_g6 = torch + _log_sigmoid
  update torch = max(exp_g6, (0.5 * (((0.5 * D)) + exp(-1)) + tanh(3.5 * ((0.5 * D)))))
  output torch
}
"""


def test_a_tie_by_rounding_is_not_well_conditioned():
    from recc.testing.agree import interpreter_results, well_conditioned
    from recc.testing.regimes import SATURATING

    rec = load(ROUNDING_TIE)
    a = analyze(rec)
    tensors, init = SATURATING.call(rec, 5, seed=2087, heads=2)
    reference = interpreter_results(rec, a, tensors, init, 2087)
    assert not well_conditioned(rec, a, tensors, init, reference, 2087)


# Drawn by tests/test_backend_properties.py in CI (integers regime, T=13, heads 2, seed
# 9180): h_1 = c + tanh(1), h_2 = h_1 + tanh(-1) is c to within one ulp, so max(h_2, c)
# ties by a coincidence of rounding that Triton's scan, composing the maps in another
# order, resolves the other way: the gradient of tl differed (0.008 against -0.154).
INTEGER_ROUNDING_TIE = """recurrence update_rule {
  dims D
  input _tanh[D], tl[D], statei4[D]
  param statep5, statep3[D]
  state stateh6[D] = 1
  update stateh6 = max(stateh6, (sigmoid(statep3 - statep5) - 0.5)) + (tanh(tl))
  output stateh6
}
"""
EXACT_TIE = """recurrence clamp {
  dims D
  input a[D], b[D]
  state h[D] = 0
  update h = max(min(h, a), b)
  output h
}
"""


def test_integer_inputs_give_exact_values_only_where_every_result_is_an_integer():
    """The integers regime tests the tie rule where its values are exact in every order;
    a tanh of an integer makes its ties coincidences of rounding, judged as any other."""
    from recc.testing.agree import exact_values, interpreter_results, well_conditioned
    from recc.testing.regimes import INTEGERS

    rec = load(INTEGER_ROUNDING_TIE)
    a = analyze(rec)
    tensors, init = INTEGERS.call(rec, 13, seed=9180, heads=2)
    reference = interpreter_results(rec, a, tensors, init, 9180)
    assert not exact_values(reference)
    assert not well_conditioned(rec, a, tensors, init, reference, 9180)
    rec = load(EXACT_TIE)
    a = analyze(rec)
    tensors, init = INTEGERS.call(rec, 13, seed=1)
    assert exact_values(interpreter_results(rec, a, tensors, init, 1))

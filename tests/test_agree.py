"""recc.testing.agree: the comparison `recc check`, the property tests and the fuzz
campaign share. It must report every real difference, and no difference that IEEE
arithmetic leaves open (overflow, NaN results, singular derivatives)."""

from __future__ import annotations

import torch

from recc.ir import load
from recc.testing.agree import compare
from recc.verify import check

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

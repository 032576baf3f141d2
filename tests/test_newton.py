"""The Newton-parallel solver (`strategy="newton"`; recc.lowering.newton, printed for
torch by recc.backends.torch.newton).

Newton must give what the interpreter gives, values, final states and every
gradient (fp64, recc.testing.agree's comparison), whether it converged or fell
back to the sequential loop; it must never return an unconverged iterate. The
zoo's gru / lstm / elman through Newton against torch.nn are in
tests/test_oracles.py (`engine="newton"`), and at lengths where Newton converges
before T here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import Phase, assume, event, given, settings
from hypothesis import strategies as st

import recc
from recc.analysis import analyze
from recc.backends.torch.newton import (
    ADJOINT_FROM_T,
    NEWTON_FROM_T,
    NewtonFallbackWarning,
    NewtonSolver,
    NewtonStats,
)
from recc.backends.torch.sequential import SequentialLoop
from recc.errors import RecError
from recc.ir import load
from recc.lowering import NEWTON, SEQUENTIAL, newton_plan, plan, sequential_plan
from recc.signature import bind
from recc.testing.agree import disagreements, interpreter_results
from recc.testing.regimes import NORMAL, regimes_for
from recc.testing.strategies import spec_of
from tests.helpers.profiles import SLOW

SPECS = Path(__file__).parent.parent / "specs"
DTYPE = torch.float64
NONLINEAR = ["elman", "gru", "indrnn", "lstm", "ltc", "paragru", "paralstm", "slstm"]
EXACT = ["indrnn", "paragru", "paralstm"]  # elementwise Jacobians: Newton proper


def newton(rec, analysis, max_iterations: int | None = None, forward: str = "newton"):
    """The torch backend's Newton solver for `rec`, as agree's callable, and the
    solver (its `last_stats`). `forward="loop"`: the loop's states, the adjoint
    backward."""
    lowering = plan(rec, analysis, NEWTON)
    loop = SequentialLoop(lowering.sequential)
    solver = NewtonSolver(lowering.newton, loop, max_iterations)

    def run(tensors, init):
        bound = bind(rec, tensors, init or None, check_nan=False)
        return solver.run(bound, forward=forward)

    return run, solver


def check(rec, regime, T, seed, heads=None, max_iterations=None):
    analysis = analyze(rec)
    tensors, init = regime.call(rec, T, seed=seed, heads=heads)
    run, solver = newton(rec, analysis, max_iterations)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NewtonFallbackWarning)  # the loop's answer is checked
        found = disagreements(rec, analysis, run, tensors, init, seed=seed)
    assert not found, f"[{regime.name}, T={T}]: " + "; ".join(map(str, found))
    return solver.last_stats


@pytest.mark.parametrize("name", NONLINEAR)
@pytest.mark.parametrize("T", [1, 6, 37])
def test_every_nonlinear_zoo_spec_through_newton_equals_the_interpreter(name, T):
    rec = load(SPECS / f"{name}.rec")
    heads = 2 if name == "slstm" else None
    for regime in regimes_for("nonlinear"):
        stats = check(rec, regime, T, seed=T, heads=heads)
        assert isinstance(stats, NewtonStats)
        assert stats.converged or stats.fell_back, stats


@pytest.mark.parametrize("name", NONLINEAR)
@pytest.mark.parametrize("T", [6, 37])
def test_the_loops_forward_with_the_adjoint_backward_equals_the_interpreter(name, T):
    """What a CPU call with gradients runs: the loop's states, Newton's adjoint."""
    rec = load(SPECS / f"{name}.rec")
    analysis = analyze(rec)
    heads = 2 if name == "slstm" else None
    run, solver = newton(rec, analysis, forward="loop")
    for regime in regimes_for("nonlinear"):
        tensors, init = regime.call(rec, T, seed=T, heads=heads)
        found = disagreements(rec, analysis, run, tensors, init, seed=T)
        assert not found, f"[{regime.name}, T={T}]: " + "; ".join(map(str, found))
        assert solver.last_stats.forward == "loop" and solver.last_stats.iterations == 0


@pytest.mark.parametrize("name", ["elman", "gru", "indrnn", "lstm", "paragru", "paralstm"])
def test_newton_itself_answers_contracting_zoo_specs(name):
    """The normal regime contracts for these: Newton converges, no fallback, in
    fewer iterations than steps; exact Jacobians take one adjoint scan."""
    stats = check(load(SPECS / f"{name}.rec"), NORMAL, 37, seed=3)
    assert stats.converged and stats.fell_back is None, stats
    assert stats.iterations < 37, stats
    if name in EXACT:
        assert stats.adjoint_iterations == 1, stats
    else:
        assert 1 < stats.adjoint_iterations < 37, stats


def test_exact_and_quasi_plans():
    def solver_of(name):
        seq = sequential_plan(load(SPECS / f"{name}.rec"))
        found = newton_plan(seq)
        assert not isinstance(found, str), found
        return found

    for name in EXACT:
        assert solver_of(name).exact, name
    assert solver_of("paralstm").coupled == 2  # [c, h]: 2 x 2 blocks per channel
    gru = solver_of("gru")
    assert not gru.exact and "quasi-Newton" in gru.describe()
    assert set(gru.diagonals.values()) == {"W_hr", "W_hz", "W_hn"}
    assert set(gru.transposed) == {"h"}  # the true J^T lambda for the adjoint
    lstm = solver_of("lstm")
    assert {(b.target, b.source, b.exact) for b in lstm.blocks} >= {
        ("c", "c", True),
        ("h", "h", False),
    }


MIXED = """
recurrence mixed {
  dims D, E
  input x[D]
  param W[D, E], U[E, D]
  state h[D] = 0
  state g[E] = 0
  update h = tanh(W @ g + x)
  update g = tanh(U @ h)
  output h
}
"""


def test_a_block_between_states_of_different_dims_has_no_newton_plan():
    rec = load(MIXED)
    found = plan(rec, analyze(rec))
    assert found.algorithm == SEQUENTIAL and found.newton is None
    assert "maps a state of dims ['E'] to one of dims ['D']" in found.no_newton_plan
    with pytest.raises(RecError, match="strategy='newton' cannot run 'mixed'"):
        recc.compile(MIXED, strategy="newton")


def test_gru_through_newton_equals_torch_nn_gru_before_T_iterations():
    """fp64 to 1e-9 at T = 64, where (quasi-)Newton stops well before T."""
    torch.manual_seed(1)
    B, T, I, D = 3, 64, 5, 6  # noqa: N806
    gru = torch.nn.GRU(I, D, batch_first=True, dtype=torch.float64)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(1, B, D, dtype=torch.float64, requires_grad=True)
    y, hn = gru(x, h0)
    w = dict(zip(("W_ir", "W_iz", "W_in"), gru.weight_ih_l0.chunk(3)))
    w.update(zip(("W_hr", "W_hz", "W_hn"), gru.weight_hh_l0.chunk(3)))
    w.update(zip(("b_ir", "b_iz", "b_in"), gru.bias_ih_l0.chunk(3)))
    w.update(zip(("b_hr", "b_hz", "b_hn"), gru.bias_hh_l0.chunk(3)))
    fn = recc.compile(SPECS / "gru.rec", strategy="newton")
    got, got_n = fn(x=x, **w, initial_state=h0[0], output_final_state=True)
    assert fn.last_stats.converged and fn.last_stats.iterations < T // 2, fn.last_stats
    torch.testing.assert_close(got, y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_n, hn[0], rtol=1e-9, atol=1e-9)
    g = torch.randn_like(y)
    leaves = [x, h0, *gru.parameters()]
    want = torch.autograd.grad((y * g).sum() + hn.sum(), leaves)
    found = torch.autograd.grad((got * g).sum() + got_n.sum(), leaves)
    for a, b in zip(found, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert 1 < fn.last_stats.adjoint_iterations < T // 2, fn.last_stats


def test_the_iteration_cap_falls_back_to_the_loop_with_a_warning():
    rec = load(SPECS / "paralstm.rec")
    run, solver = newton(rec, analyze(rec), max_iterations=1)
    tensors, init = NORMAL.call(rec, 20, seed=2)
    with pytest.warns(NewtonFallbackWarning, match="no convergence in 1 iterations"):
        found = disagreements(rec, analyze(rec), run, tensors, init, seed=2)
    assert not found, found
    assert not solver.last_stats.converged
    assert "no convergence" in solver.last_stats.fell_back


def test_expanding_dynamics_go_to_the_loop_up_front():
    """Elman with spectral radius 3 over 200 steps: Newton would need ~T iterations
    and its scans multiply growths of e^200; the first iterate's Jacobians show it."""
    rec = load(SPECS / "elman.rec")
    torch.manual_seed(0)
    B, T, D = 2, 200, 4  # noqa: N806
    q, _ = torch.linalg.qr(torch.randn(D, D, dtype=torch.float64))
    tensors = {
        "x": torch.randn(B, T, 3, dtype=torch.float64) * 0.1,
        "W_ih": torch.randn(D, 3, dtype=torch.float64),
        "W_hh": 3.0 * q,
        "b_ih": torch.zeros(D, dtype=torch.float64),
        "b_hh": torch.zeros(D, dtype=torch.float64),
    }
    run, solver = newton(rec, analyze(rec))
    with pytest.warns(NewtonFallbackWarning, match="expanding dynamics"):
        outputs, finals = run(tensors, {})
    assert solver.last_stats.iterations == 0 and solver.last_stats.growth > 8
    # chaotic: a rounding difference grows by e^200, so the reference is the loop itself
    # (the interpreter's blocking of the input products differs from the loop's)
    loop = recc.compile(SPECS / "elman.rec", strategy="sequential")
    y, h = loop(**tensors, output_final_state=True)
    torch.testing.assert_close(outputs["h"], y, rtol=0, atol=0)
    torch.testing.assert_close(finals["h"], h, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["paragru", "paralstm", "slstm"])
def test_nan_in_a_call_falls_back_and_keeps_the_loops_nan_pattern(name):
    """Diagonal, 2 x 2 and 4 x 4 blocks (whose growth estimate takes eigenvalues)."""
    rec = load(SPECS / f"{name}.rec")
    tensors, init = NORMAL.call(rec, 9, seed=4)
    first = rec.inputs[0].name
    tensors[first][1, 4, 0] = float("nan")
    run, solver = newton(rec, analyze(rec))
    with pytest.warns(NewtonFallbackWarning, match="not finite"):
        found = disagreements(rec, analyze(rec), run, tensors, init, seed=4)
    assert not found, found
    with pytest.warns(NewtonFallbackWarning):
        outputs, _ = run({k: v.detach() for k, v in tensors.items()}, init)
    h = outputs["h"]
    assert h[0].isfinite().all() and h[1, :4].isfinite().all() and h[1, 4:].isnan().any()


def test_a_state_nothing_reads_is_differentiated_at_the_last_step_only():
    """As in the loop (tests/test_sequential.py): sqrt'(0) = inf must not meet the
    zero adjoint of the steps before the last."""
    rec = load(
        """
recurrence unread {
  dims D
  input x[D], y[D]
  state h[D] = -0.5
  state last[D] = -0.5
  update h = tanh(-0.5 * h + log(sigmoid(x)))
  update last = -min(y, 1) * sqrt(0 * x) + tanh(h)
  output o = h * x
}
"""
    )
    for T in (1, 13):
        check(rec, NORMAL, T, seed=5888)


def test_auto_runs_the_loop_on_a_cpu_and_explain_says_the_rule():
    fn = recc.compile(SPECS / "paragru.rec")
    assert fn.plan.algorithm == NEWTON and fn.plan.newton is not None
    tensors = {"x": torch.randn(2, 300, 3), **_paragru_params(fn.spec)}
    fn(**tensors)
    assert fn.last_stats is None  # the loop ran: no Newton record
    text = fn.explain()
    assert f"CUDA tensors and T >= {NEWTON_FROM_T}: Newton" in text
    assert "exact Jacobian, diagonal" in text
    forced = recc.compile(SPECS / "paragru.rec", strategy="newton")
    forced(**tensors)
    assert forced.last_stats.converged
    assert "strategy='newton'" in forced.explain()


@pytest.mark.parametrize("name", ["paragru", "paralstm"])
def test_on_a_cpu_calls_that_need_gradients_run_the_loop_with_the_adjoint_backward(name):
    """The CPU rule: the loop's forward is faster than Newton's, the adjoint backward
    than autograd through the loop, from T = 32 with an exact Jacobian
    (benchmarks/newton.py --crossover). Its gradients are the loop's."""
    fn = recc.compile(SPECS / f"{name}.rec")
    loop = recc.compile(SPECS / f"{name}.rec", strategy="sequential")
    T = ADJOINT_FROM_T[fn.plan.newton.exact]
    g = torch.Generator().manual_seed(0)
    rec = fn.spec
    params = {
        p.name: torch.randn(*(3 if d == "I" else 4 for d in p.dims), generator=g, dtype=DTYPE) * 0.5
        for p in rec.params
    }
    x = torch.randn(2, T, 3, generator=g, dtype=DTYPE)
    fn(x=x, **params)
    assert fn.last_stats is None  # no gradients: the loop
    fn(x=x[:, : T - 1].requires_grad_(), **params)
    assert fn.last_stats is None  # shorter: the loop
    x.requires_grad_()
    y = fn(x=x, **params)
    stats = fn.last_stats
    assert stats is not None and stats.forward == "loop" and stats.iterations == 0
    w = torch.randn(y.shape, generator=g, dtype=DTYPE)
    (got,) = torch.autograd.grad((y * w).sum(), x)
    assert fn.last_stats.adjoint_iterations >= 1
    y_loop = loop(x=x, **params)
    torch.testing.assert_close(y, y_loop, rtol=0, atol=0)  # the same loop
    (want,) = torch.autograd.grad((y_loop * w).sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert f"gradients with T >= {T}: the loop's forward with" in fn.explain()


def test_on_a_cpu_quasi_newton_plans_keep_autograd_through_the_loop():
    fn = recc.compile(SPECS / "elman.rec")
    assert ADJOINT_FROM_T[fn.plan.newton.exact] is None
    rec = fn.spec
    params = {p.name: torch.randn(*(3 if d == "I" else 4 for d in p.dims)) for p in rec.params}
    y = fn(x=torch.randn(1, 2048, 3, requires_grad=True), **params)
    assert fn.last_stats is None and y.requires_grad
    assert "gradients with T" not in fn.explain()


def _paragru_params(rec):
    g = torch.Generator().manual_seed(0)
    sizes = {"I": 3, "D": 4}
    return {p.name: torch.randn(*(sizes[d] for d in p.dims), generator=g) * 0.5 for p in rec.params}


def test_strategy_newton_for_a_linear_spec_is_an_error():
    with pytest.raises(RecError, match="strategy='newton' cannot run 'mingru'"):
        recc.compile(SPECS / "mingru.rec", strategy="newton")


def test_fp32_newton_against_the_fp64_interpreter():
    rec = load(SPECS / "gru.rec")
    analysis = analyze(rec)
    tensors, init = NORMAL.call(rec, 50, seed=7)
    reference = interpreter_results(rec, analysis, tensors, init, seed=7, gradients=False)
    fn = recc.compile(SPECS / "gru.rec", strategy="newton")
    y = fn(**{k: v.float() for k, v in tensors.items()}, initial_state={"h": init["h"].float()})
    assert fn.last_stats.converged
    want = reference[0][1] if isinstance(reference[0], tuple) else reference[0]["h"]
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


def test_a_long_trained_scale_gru_converges_or_falls_back_never_garbage():
    """T = 10,000, fp32, weights at a trained scale (recurrent gain 1): the answer is
    the loop's to fp32 accuracy either way."""
    torch.manual_seed(3)
    B, T, I, D = 1, 10_000, 4, 8  # noqa: N806
    gru = torch.nn.GRU(I, D, batch_first=True)
    with torch.no_grad():
        for w in gru.weight_hh_l0.chunk(3):
            q, _ = torch.linalg.qr(torch.randn(D, D))
            w.copy_(q)
    x = torch.randn(B, T, I)
    y, _ = gru(x)
    w = dict(zip(("W_ir", "W_iz", "W_in"), gru.weight_ih_l0.detach().chunk(3)))
    w.update(zip(("W_hr", "W_hz", "W_hn"), gru.weight_hh_l0.detach().chunk(3)))
    w.update(zip(("b_ir", "b_iz", "b_in"), gru.bias_ih_l0.detach().chunk(3)))
    w.update(zip(("b_hr", "b_hz", "b_hn"), gru.bias_hh_l0.detach().chunk(3)))
    fn = recc.compile(SPECS / "gru.rec", strategy="newton")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NewtonFallbackWarning)
        got = fn(x=x, **w)
    torch.testing.assert_close(got, y.detach(), rtol=1e-4, atol=1e-4)
    stats = fn.last_stats
    assert stats.converged or stats.fell_back, stats


# Each example runs the interpreter, Newton and their gradients: a few in the fast
# tier, many in the slow one.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def check_drawn(source: str, data) -> None:
    rec = load(source)
    analysis = analyze(rec)
    lowering = plan(rec, analysis)
    event("newton" if lowering.newton is not None else f"no Newton: {lowering.no_newton_plan[:40]}")
    assume(lowering.newton is not None)
    event("exact" if lowering.newton.exact else "quasi")
    regime = data.draw(st.sampled_from(regimes_for(analysis.kind)), label="regime")
    T = data.draw(st.sampled_from([1, 2, 5, 13, 40]), label="T")
    heads = data.draw(st.sampled_from([None, 2]), label="heads")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    stats = check(rec, regime, T, seed, heads)
    event("converged" if stats.converged else "fell back")


@settings(SLOW, max_examples=20, phases=NO_SHRINK)
@given(case=st.data())
def test_random_nonlinear_specs_through_newton_equal_the_interpreter(case):
    source, _ = case.draw(spec_of("nonlinear"))
    check_drawn(source, case)


@pytest.mark.slow
@settings(SLOW, phases=NO_SHRINK)
@given(case=st.data())
def test_random_nonlinear_specs_through_newton_equal_the_interpreter_slow(case):
    source, _ = case.draw(spec_of("nonlinear"))
    check_drawn(source, case)

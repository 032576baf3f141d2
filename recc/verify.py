"""`recc check`: run what exists for a spec against the interpreter, in adversarial regimes.

Stage: top level (uses analysis, lowering, backends, interpreter). For every
input regime the spec's class admits (`recc.testing.regimes`: normal and
positive draws, integers for ties and exact cancellations, zeros, saturating
gates of exactly 0 and 1, huge and tiny magnitudes, and for MinMax an
infinite start) and every length in `LENGTHS` (T = 1 and lengths that are no
multiple of a chunk or block):
  - the canonical form (`form_step`) must reproduce every step's states;
  - every backend the lowering plan lists must reproduce the interpreter's
    outputs, final states, and gradients (of a random projection of all
    outputs and final states) with respect to every input, param and
    initial state.
Agreement is `recc.testing.agree.compare`: the same NaN / +inf / -inf
positions, finite values to `TOLERANCE` relative to each tensor's scale (fp64).
A failure names the regime, the length, the backend and the first tensor
that differs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from recc.analysis import Analysis, analyze
from recc.backends.registry import REFERENCE, REGISTRY
from recc.form_step import form_step
from recc.interpreter import TorchOps
from recc.ir.evaluate import step
from recc.ir.nodes import Recurrence
from recc.lowering import LoweringPlan, plan
from recc.signature import bind
from recc.testing.agree import (
    TOLERANCE as TOLERANCES,
)
from recc.testing.agree import (
    Disagreement,
    compare,
    device_for,
    disagreements,
    exact_values,
    finite_call,
    interpreter_results,
    well_conditioned,
)
from recc.testing.regimes import INTEGERS, LENGTHS, NORMAL, POSITIVE, Regime, regimes_for

TOLERANCE = TOLERANCES[torch.float64]


@dataclass(frozen=True)
class Failure:
    regime: str
    T: int
    executor: str  # "form" or a backend
    disagreement: Disagreement

    def __str__(self) -> str:
        return f"{self.executor} [{self.regime}, T={self.T}] {self.disagreement}"


@dataclass(frozen=True)
class CheckResult:
    rec: Recurrence
    analysis: Analysis
    plan: LoweringPlan
    checked: tuple[str, ...]  # "form" and the backends that ran
    failures: tuple[Failure, ...]
    skipped: dict[str, str]  # backend -> why it was not run (`supports`'s reason)
    regimes: tuple[str, ...]
    seconds: float
    # disagreements on calls whose reference is itself undetermined at the tolerance
    # (`recc.testing.agree.well_conditioned`): reported, not failures
    set_aside: tuple[Failure, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures


def random_call(rec: Recurrence, positive: bool, seed: int = 0, B: int = 2, T: int = 8):
    """Random fp64 tensors for every input and param, and initial states."""
    return (POSITIVE if positive else NORMAL).call(rec, T, seed=seed, B=B)


def check(
    rec: Recurrence,
    seed: int = 0,
    regimes: tuple[Regime, ...] | None = None,
    lengths: tuple[int, ...] = LENGTHS,
    backends: tuple[str, ...] | None = None,
) -> CheckResult:
    """`backends`: the backends to run (default: every one of the registry that
    runs this plan, on the CPU or a GPU here); the canonical form is always checked."""
    start = time.perf_counter()
    analysis = analyze(rec)
    lowering = plan(rec, analysis)
    regimes = regimes or regimes_for(analysis.kind)
    wanted = backends
    devices: dict[str, torch.device] = {}  # backend -> where it runs here
    skipped: dict[str, str] = {}
    for backend in REGISTRY:
        if backend is REFERENCE or (wanted is not None and backend.name not in wanted):
            continue
        device, reason = device_for(backend.name, lowering)
        if device is None:
            skipped[backend.name] = str(reason)
        else:
            devices[backend.name] = device
    backends_run = list(devices)
    failures: list[Failure] = []
    set_aside: list[Failure] = []
    failed: set[str] = set()  # one failure per executor is enough
    for regime in regimes:
        for T in lengths:
            tensors, init = regime.call(rec, T, seed=seed)
            if "form" not in failed:
                for d in _form_disagreements(rec, analysis, tensors, init, regime):
                    failures.append(Failure(regime.name, T, "form", d))
                    failed.add("form")
                    break
            todo = [b for b in backends_run if b not in failed]
            if not todo:
                continue
            reference = interpreter_results(rec, analysis, tensors, init, seed)
            for backend in todo:
                found = disagreements(
                    rec,
                    analysis,
                    backend,
                    tensors,
                    init,
                    seed,
                    reference,
                    regime.overflows,
                    devices[backend],
                )
                if not found:
                    continue
                # in the integers regime with every result an integer, ties are ties in
                # every order: the tie rule decides, and a backend must follow it
                exact_ties = regime is INTEGERS and exact_values(reference)
                if not exact_ties and not well_conditioned(
                    rec, analysis, tensors, init, reference, seed
                ):
                    # the interpreter's own answer moves more than the tolerance under
                    # a one-ulp change of its inputs (a gradient that is rounding noise,
                    # a max tied by a rounding): no order of evaluation is more right
                    set_aside.append(Failure(regime.name, T, backend, found[0]))
                    continue
                failures.append(Failure(regime.name, T, backend, found[0]))
                failed.add(backend)
    return CheckResult(
        rec,
        analysis,
        lowering,
        ("form", *backends_run),
        tuple(failures),
        skipped,
        tuple(r.name for r in regimes),
        time.perf_counter() - start,
        tuple(set_aside),
    )


def _form_disagreements(
    rec: Recurrence, analysis: Analysis, tensors, init, regime: Regime
) -> list[Disagreement]:
    """The canonical form, step by step from the interpreter's states, against the spec."""
    bound = bind(rec, tensors, init, check_nan=False)
    ops = TorchOps(bound.compute_dtype, bound.device)
    states = dict(bound.initial_state)
    finite = finite_call(rec, tensors, init)
    for t in range(bound.T):
        env = {**bound.params, **{k: v[:, t] for k, v in bound.inputs.items()}, **states}
        reference, _ = step(rec, ops, env, outputs=False)
        candidate = form_step(rec, analysis, env)
        for name, ref in reference.items():
            ref = torch.broadcast_to(ref, env[name].shape)
            overflowed = (regime.overflows and not bool(torch.isfinite(ref).all())) or (
                finite and bool(torch.isinf(ref).any())
            )
            if overflowed:
                return []  # the spec itself overflowed: nothing later is comparable
            d = compare(f"state {name} at step {t}", ref, candidate[name], TOLERANCE)
            if d is not None:
                return [d]
        states = {k: torch.broadcast_to(v, env[k].shape) for k, v in reference.items()}
    return []

"""`recc check`: run what exists for a spec against the interpreter.

Stage: top level (uses analysis, lowering, backends, interpreter). Random
fp64 inputs at small distinct dim sizes:
  - the canonical form (`form_step`) must reproduce every step's states;
  - every backend the lowering plan lists must reproduce the interpreter's
    outputs, final states, and gradients (of a random projection of all
    outputs and final states) with respect to every input, param and
    initial state.
Everything must agree to `TOLERANCE` (relative, fp64).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from recc.analysis import Analysis, analyze
from recc.backends.torch import run_scan
from recc.form_step import form_step
from recc.interpreter import TorchOps, run
from recc.ir.evaluate import step
from recc.ir.nodes import Recurrence
from recc.lowering import LoweringPlan, plan
from recc.lowering.plan import INTERPRETER, TORCH, TRITON
from recc.signature import bind

TOLERANCE = 1e-10  # max |form - interpreter| / (1 + |interpreter|), fp64


@dataclass(frozen=True)
class CheckResult:
    rec: Recurrence
    analysis: Analysis
    plan: LoweringPlan
    form_error: float
    backend_errors: dict[str, float]  # backend -> worst relative error (values and grads)
    skipped: dict[str, str]  # backend -> why it was not run here
    inputs: str  # which input distribution was used
    seconds: float

    @property
    def ok(self) -> bool:
        errors = [self.form_error, *self.backend_errors.values()]
        return all(e <= TOLERANCE for e in errors)


def random_call(rec: Recurrence, positive: bool, seed: int = 0, B: int = 2, T: int = 8):
    """Random fp64 tensors for every input and param, and initial states."""
    g = torch.Generator().manual_seed(seed)
    sizes = {d: 3 + i for i, d in enumerate(rec.dims)}

    def draw(*shape: int) -> torch.Tensor:
        if positive:
            return torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 0.05
        return torch.randn(shape, generator=g, dtype=torch.float64) * 0.5

    tensors = {d.name: draw(B, T, *(sizes[x] for x in d.dims)) for d in rec.inputs}
    tensors.update({d.name: draw(*(sizes[x] for x in d.dims)) for d in rec.params})
    init = {s.name: draw(B, *(sizes[x] for x in s.dims)) for s in rec.states}
    return tensors, init


def check(rec: Recurrence, seed: int = 0) -> CheckResult:
    start = time.perf_counter()
    analysis = analyze(rec)
    lowering = plan(rec, analysis)
    for positive in (False, True):
        tensors, init = random_call(rec, positive, seed)
        bound = bind(rec, tensors, init)
        outputs, finals = run(rec, bound)
        if all(torch.isfinite(v).all() for v in [*outputs.values(), *finals.values()]):
            break
    error = _form_error(rec, analysis, bound)
    backend_errors: dict[str, float] = {}
    skipped: dict[str, str] = {}
    for backend in lowering.backends:
        if backend == INTERPRETER:
            continue
        reason = _cannot_run(rec, analysis, backend)
        if reason:
            skipped[backend] = reason
            continue
        backend_errors[backend] = _backend_error(rec, analysis, backend, tensors, init, seed)
    name = "positive uniform(0.05, 0.95)" if positive else "normal(0, 0.5)"
    return CheckResult(
        rec,
        analysis,
        lowering,
        error,
        backend_errors,
        skipped,
        name,
        time.perf_counter() - start,
    )


def _cannot_run(rec: Recurrence, analysis: Analysis, backend: str) -> str | None:
    if backend != TRITON:
        return None
    if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        return "no GPU here (set TRITON_INTERPRET=1 to run Triton's CPU interpreter)"
    from recc.backends.triton.launch import ScanKernel
    from recc.backends.triton.scan_codegen import Unsupported

    try:
        ScanKernel(rec, analysis)
    except Unsupported as err:
        return f"no kernel: {err}"
    return None


def _run_triton(rec, analysis, bound, tensors, init):
    from recc.backends.triton.function import triton_scan
    from recc.backends.triton.launch import ScanKernel

    return triton_scan(rec, analysis, ScanKernel(rec, analysis), tensors, init)


def _backend_error(rec, analysis, backend, tensors, init, seed) -> float:
    """Worst relative error of a backend vs the interpreter, values and gradients."""

    def run_with(executor):
        leaves = {k: v.clone().requires_grad_(True) for k, v in {**tensors, **init}.items()}
        bound = bind(rec, {k: leaves[k] for k in tensors}, {k: leaves[k] for k in init})
        if executor == INTERPRETER:
            outputs, finals = run(rec, bound)
        elif executor == TORCH:
            outputs, finals = run_scan(rec, analysis, bound)
        else:
            assert executor == TRITON
            given = {k: leaves[k] for k in tensors}
            outputs, finals = _run_triton(rec, analysis, bound, given, {k: leaves[k] for k in init})
        results = [*outputs.values(), *finals.values()]
        g = torch.Generator().manual_seed(seed + 1)
        loss = sum((r * torch.randn(r.shape, generator=g, dtype=r.dtype)).sum() for r in results)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        grads = [torch.zeros_like(x) if d is None else d for x, d in zip(leaves.values(), grads)]
        return [r.detach() for r in results] + list(grads)

    reference, candidate = run_with(INTERPRETER), run_with(backend)
    worst = 0.0
    for ref, got in zip(reference, candidate):
        if ref.numel() == 0:
            continue
        same = (ref == got) | (torch.isnan(ref) & torch.isnan(got))
        diff = torch.where(same, torch.zeros_like(ref), (got - ref).abs() / (1 + ref.abs()))
        worst = max(worst, float(diff.max()))
    return worst


def _form_error(rec: Recurrence, analysis: Analysis, bound) -> float:
    ops = TorchOps(bound.compute_dtype, bound.device)
    states = dict(bound.initial_state)
    worst = 0.0
    for t in range(bound.T):
        env = {**bound.params, **{k: v[:, t] for k, v in bound.inputs.items()}, **states}
        reference, _ = step(rec, ops, env, outputs=False)
        candidate = form_step(rec, analysis, env)
        for name, ref in reference.items():
            ref = torch.broadcast_to(ref, env[name].shape)
            diff = (candidate[name] - ref).abs() / (1 + ref.abs())
            both_inf = torch.isinf(ref) & (candidate[name] == ref)
            diff = torch.where(both_inf, torch.zeros_like(diff), diff)
            worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
            if torch.isnan(diff).any():
                return float("nan")
        states = {k: torch.broadcast_to(v, env[k].shape) for k, v in reference.items()}
    return worst

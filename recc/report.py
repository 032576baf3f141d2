"""Human-readable reports: what `recc explain` prints.

Stage: top level (reads analysis and lowering results; computes nothing new).
"""

from __future__ import annotations

from recc.analysis.forms import Analysis, DiagonalForm, DplrForm, MinMaxForm
from recc.ir.build import show
from recc.ir.nodes import Expr, Recurrence
from recc.ir.printer import expr_to_source
from recc.lowering import LoweringPlan


def _src(expr: Expr | None, zero: str = "0") -> str:
    return zero if expr is None else expr_to_source(expr)


def canonical_form_lines(rec: Recurrence, analysis: Analysis) -> list[str]:
    form = analysis.form
    lines: list[str] = []
    if isinstance(form, DiagonalForm):
        for block in form.blocks:
            for i, target in enumerate(block.states):
                terms = [
                    f"a_{target}_{source} * {source}"
                    for source, coef in zip(block.states, block.coupling[i])
                    if coef is not None
                ]
                lines.append(f"{target}' = {' + '.join(terms + [f'b_{target}'])}")
            for i, target in enumerate(block.states):
                for source, coef in zip(block.states, block.coupling[i]):
                    if coef is not None:
                        lines.append(f"  a_{target}_{source} = {_src(coef)}")
                lines.append(f"  b_{target} = {_src(block.inject[i])}")
    elif isinstance(form, DplrForm):
        s = form.state
        lines.append(
            f"{s}' = {s} * d_{s} + sum_r outer({s} @ u_r, w_r) + B_{s}   (rank {form.rank})"
        )
        lines.append(f"  d_{s} = {_src(form.decay)}")
        for r, term in enumerate(form.terms, 1):
            lines.append(f"  u_{r} = {_src(term.u)}")
            lines.append(f"  w_{r} = {_src(term.w)}")
        lines.append(f"  B_{s} = {_src(form.inject)}")
    elif isinstance(form, MinMaxForm):
        for name, (a, b) in form.coefficients.items():
            if form.semiring == "max-min":
                lines.append(f"{name}' = max(min({name}, a_{name}), b_{name})")
                lines.append(f"  a_{name} = {_src(a, 'inf')}")
            else:
                lines.append(f"{name}' = {form.lattice}({name} + a_{name}, b_{name})")
                lines.append(f"  a_{name} = {_src(a)}")
            lines.append(f"  b_{name} = {_src(b, '-inf' if form.lattice == 'max' else 'inf')}")
    else:
        lines.append("(none: the update is used as written)")
    return lines


def kernel_lines(rec: Recurrence, analysis: Analysis, arch: int = 90) -> list[str]:
    """Registers and spills of the generated Triton kernels, compiled ahead of time."""
    try:
        from recc.backends.triton.aot import compile_reports
        from recc.backends.triton.launch import ScanKernel, compile_jobs
        from recc.backends.triton.scan_codegen import Unsupported
    except ImportError as err:  # pragma: no cover - triton is a dependency
        return [f"Triton kernels: unavailable ({err})"]
    try:
        kernel = ScanKernel(rec, analysis)
    except Unsupported as err:
        return [f"Triton kernels: none ({err})"]
    reports = compile_reports(compile_jobs(kernel, arch))
    names = ("forward", "forward + checkpoints", "backward")
    lines = [f"Triton kernels, sm_{arch}, default tiles (compiled ahead of time):"]
    for name, r in zip(names, reports):
        lines.append(
            f"  {name:22} {r.registers:3d} registers/thread, spills "
            f"{r.spill_store_bytes}+{r.spill_load_bytes} B, shared {r.shared_mem_bytes} B"
        )
    return lines


def explain(
    rec: Recurrence, analysis: Analysis, lowering: LoweringPlan, registers: bool = False
) -> str:
    out = [f"recurrence {rec.name}  ({rec.filename})"]
    states = ", ".join(f"{s.name}{show(s.dims) if s.dims else ' (scalar)'}" for s in rec.states)
    out.append(f"  states: {states}")
    out.append("  transition, first element (sympy: simplified, common subexpressions shared):")
    out += [f"    {line}" for line in analysis.transition]
    detail = ""
    if analysis.kind == "dplr":
        detail = f" (rank {analysis.rank})"
    elif analysis.kind == "minmax":
        detail = f" (semiring {analysis.semiring})"
    out.append(f"  class: {analysis.kind}{detail}")
    out.append("  canonical form:")
    out += [f"    {line}" for line in canonical_form_lines(rec, analysis)]
    affine = "affine" if analysis.jacobian.affine else "state-dependent"
    out.append(f"  Jacobian d(new state)/d(state): {analysis.jacobian.describe()}, {affine}")
    out.append("  why:")
    out += [f"    - {reason}" for reason in analysis.reasons]
    out.append(f"  lowering: {lowering.description}")
    out.append(f"    because: {lowering.why}")
    out.append(f"    status: {lowering.status}")
    if registers and "triton" in lowering.backends:
        out += [f"  {line}" for line in kernel_lines(rec, analysis)]
    return "\n".join(out)

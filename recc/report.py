"""Human-readable reports: what `recc explain` prints.

Stage: top level (reads analysis and lowering results and each backend's
answer to the plan; computes nothing new).
"""

from __future__ import annotations

from recc.analysis.forms import Analysis, DiagonalForm, DplrForm, MinMaxForm
from recc.backends.registry import REGISTRY, verdicts
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
        S = f"{s}^T" if form.transposed else s
        lines.append(
            f"{S}' = {S} * d_{s} + sum_r outer({S} @ u_r, w_r) + B_{s}   (rank {form.rank})"
            + (f"   [the form of {s}^T: {s} is stored transposed]" if form.transposed else "")
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


def backend_lines(plan: LoweringPlan, registers: bool = False) -> list[str]:
    """Each backend of the registry: accepted (and what it runs) or its reason."""
    width = max(len(b.name) for b in REGISTRY)
    lines = ["backends (auto: the first that accepts the call's tensors):"]
    for backend, reason in verdicts(plan):
        verdict = f"yes: {backend.summary}" if reason is None else f"no: {reason}"
        lines.append(f"  {backend.name:{width}}  {verdict}")
        if reason is None:
            lines += [f"    {line}" for line in backend.notes(plan)]
        if registers and reason is None:
            lines += [f"    {line}" for line in backend.details(plan)]
    return lines


def explain(plan: LoweringPlan, registers: bool = False) -> str:
    rec, analysis = plan.spec, plan.analysis
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
    out.append(f"  lowering: {plan.description}")
    out.append(f"    because: {plan.why}")
    out += [f"  {line}" for line in backend_lines(plan, registers)]
    return "\n".join(out)

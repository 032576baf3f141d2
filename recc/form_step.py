"""Execute a canonical form for one step, to check it against the spec.

Stage: top level, beside `recc.verify` (used by `recc check` and the tests): it
reads the analysis and executes with the interpreter's operators, so it sits
after both in the pipeline. Evaluates the form's
coefficient expressions with the same evaluator the interpreter uses; the
update itself is the form's own equation (a * s + b, S @ (...) + B, ...).
"""

from __future__ import annotations

from typing import Any

import torch

from recc.analysis.forms import Analysis, DiagonalForm, DplrForm, MinMaxForm
from recc.interpreter import TorchOps
from recc.ir.evaluate import align, evaluate, step
from recc.ir.nodes import Expr, Recurrence


def form_step(rec: Recurrence, analysis: Analysis, env: dict[str, Any]) -> dict[str, torch.Tensor]:
    """New states from the canonical form; `env` binds inputs, params, old states."""
    first = next(iter(env.values()))
    ops = TorchOps(first.dtype, first.device)
    values = dict(env)
    for let in rec.lets:
        values[let.name] = evaluate(let.expr, values, ops)

    def coef(expr: Expr | None, dims: tuple[str, ...]) -> torch.Tensor | None:
        if expr is None:
            return None
        return align(evaluate(expr, values, ops), expr.dims, dims)

    form = analysis.form
    if isinstance(form, DiagonalForm):
        new = {}
        for block in form.blocks:
            for i, target in enumerate(block.states):
                dims = rec.state(target).dims
                total = coef(block.inject[i], dims)
                for j, source in enumerate(block.states):
                    a = coef(block.coupling[i][j], dims)
                    if a is not None:
                        term = a * env[source]
                        total = term if total is None else total + term
                new[target] = total if total is not None else torch.zeros_like(env[target])
        return {name: torch.broadcast_to(v, env[name].shape) for name, v in new.items()}
    if isinstance(form, DplrForm):
        S = env[form.state]
        dims = rec.state(form.state).dims
        if form.transposed:  # the form is of S^T
            S, dims = S.transpose(-1, -2), dims[::-1]
        cols = dims[1:]
        new_s = torch.zeros_like(S)
        if form.decay is not None:
            new_s = new_s + coef(form.decay, dims) * S
        for term in form.terms:
            u = coef(term.u, cols)
            w = coef(term.w, cols)
            su = (S * u.unsqueeze(-2)).sum(-1)
            new_s = new_s + su.unsqueeze(-1) * w.unsqueeze(-2)
        if form.inject is not None:
            new_s = new_s + coef(form.inject, dims)
        return {form.state: new_s.transpose(-1, -2) if form.transposed else new_s}
    if isinstance(form, MinMaxForm):
        new = {}
        for s in rec.states:
            a_expr, b_expr = form.coefficients[s.name]
            x = env[s.name]
            a, b = coef(a_expr, s.dims), coef(b_expr, s.dims)
            if form.semiring == "max-min":
                y = x if a is None else torch.minimum(x, a)
            else:
                y = x if a is None else x + a
            join = torch.minimum if form.lattice == "min" else torch.maximum
            new[s.name] = torch.broadcast_to(y if b is None else join(y, b), x.shape)
        return new
    return step(rec, ops, env, outputs=False)[0]

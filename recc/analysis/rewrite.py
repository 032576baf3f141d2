"""Build IR expressions while evaluating: substitution, lets, old-state readouts.

Stage: analysis. Evaluating a spec with `ExprOps` (recc.ir.fold: values are
folded IR expressions) rebuilds the spec's expressions; binding a name in the
environment substitutes it. Lets that do not depend on a substituted name
stay as references, so coefficients read like the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recc.ir.evaluate import evaluate
from recc.ir.fold import (  # noqa: F401  (the analysis's IR builders, re-exported)
    INF,
    SCALAR_OPS,
    ExprOps,
    NotCanonical,
    const,
    fold,
    fold_scalar,
    is_const,
    make,
)
from recc.ir.nodes import (
    INPUT,
    LET,
    PARAM,
    STATE,
    Apply,
    Const,
    Expr,
    Recurrence,
    Ref,
    StateDecl,
    walk,
)


def state_dependent_lets(rec: Recurrence, names: set[str]) -> set[str]:
    """Lets whose value depends (transitively) on any of `names`."""
    dependent: set[str] = set()
    for let in rec.lets:
        refs = {n.name for n in walk(let.expr) if isinstance(n, Ref)}
        if refs & (names | dependent):
            dependent.add(let.name)
    return dependent


def lets_read_by_updates(rec: Recurrence) -> set[str]:
    """Lets the updates read, directly or through other lets (not those only
    the outputs read: a readout may be any function of the state)."""
    names = {let.name for let in rec.lets}

    def reads(expr: Expr) -> set[str]:
        return {n.name for n in walk(expr) if isinstance(n, Ref) and n.name in names}

    needed = set().union(*(reads(u.expr) for u in rec.updates))
    for let in reversed(rec.lets):  # a let reads only lets defined before it
        if let.name in needed:
            needed |= reads(let.expr)
    return needed


def _leaves(rec: Recurrence) -> dict[str, Any]:
    """Every input and param (dims read as values too) as a reference to itself."""
    env: dict[str, Any] = {d.name: Ref(d.dims, d.name, INPUT) for d in rec.inputs}
    env.update({d.name: Ref(d.dims, d.name, PARAM) for d in rec.value_params()})
    return env


def _with_lets(rec: Recurrence, env: dict[str, Any], dependent: set[str]) -> ExprOps:
    """Bind every let in `env`: a dependent one written out, the others as references
    to themselves. Returns the evaluator used, for the expressions that follow."""
    ops = ExprOps()
    for let in rec.lets:
        if let.name in dependent:
            env[let.name] = evaluate(let.expr, env, ops)
        else:
            env[let.name] = Ref(let.expr.dims, let.name, LET)
    return ops


def substitute(rec: Recurrence, expr: Expr, bindings: dict[str, Expr]) -> Expr:
    """`expr` with names replaced by `bindings`; dependent lets are inlined."""
    return substitute_all(rec, [expr], bindings)[0]


def substitute_all(rec: Recurrence, exprs: list[Expr], bindings: dict[str, Expr]) -> list[Expr]:
    """`substitute` for several expressions, the lets evaluated once."""
    env = _leaves(rec)
    for s in rec.states:
        env[s.name] = Ref(s.dims, s.name, STATE)
    dependent = state_dependent_lets(rec, set(bindings))
    env.update(bindings)
    ops = _with_lets(rec, env, dependent)
    return [evaluate(expr, env, ops) for expr in exprs]


def readouts_at_old_states(rec: Recurrence, old: Callable[[StateDecl], Expr]) -> list[Expr]:
    """Every output with the state-dependent lets it reads written out, the states
    those lets read replaced by `old(state)` (h_{t-1}: a let reads the old state),
    while the output's own references to a state stay (h_t: an output reads the new
    one). An output that reads no state-dependent let is returned as written."""
    names = {s.name for s in rec.states}
    dependent = state_dependent_lets(rec, names)
    env = _leaves(rec)
    for s in rec.states:
        env[s.name] = old(s)
    ops = _with_lets(rec, env, dependent)
    for s in rec.states:
        env[s.name] = Ref(s.dims, s.name, STATE)
    return [
        evaluate(o.expr, env, ops) if mentions(o.expr, dependent) else o.expr for o in rec.outputs
    ]


def mentions(expr: Expr | None, names: set[str]) -> bool:
    return expr is not None and any(isinstance(n, Ref) and n.name in names for n in walk(expr))


class AbstractOps:
    """An evaluator semantics over an abstract domain with IR expressions as its
    state-free values. Subclasses handle values that involve the state."""

    def free(self, expr: Expr) -> Any:
        return expr

    def is_free(self, value: Any) -> bool:
        return isinstance(value, Expr)

    def const(self, node: Const) -> Any:
        return self.free(node)

    def apply(self, node: Apply, args: list[Any]) -> Any:
        if all(self.is_free(a) for a in args):
            return self.free(make(node.op, *(self.expr_of(a) for a in args), like=node.dims))
        return self.apply_abstract(node, args)

    def expr_of(self, value: Any) -> Expr:
        return value

    def apply_abstract(self, node: Apply, args: list[Any]) -> Any:
        raise NotCanonical(f"'{node.op}' of the state")


def abstract_updates(rec: Recurrence, ops: AbstractOps, states: dict[str, Any]) -> dict[str, Any]:
    """Evaluate every update with `states` bound to abstract values.

    Inputs, params and other states are free references; a let whose value
    comes out state-free stays a reference to the let. Lets that no update
    reads are skipped: they cannot change the transition's form.
    """
    env: dict[str, Any] = {}
    for decl in rec.inputs:
        env[decl.name] = ops.free(Ref(decl.dims, decl.name, INPUT))
    for decl in rec.value_params():
        env[decl.name] = ops.free(Ref(decl.dims, decl.name, PARAM))
    for s in rec.states:
        env[s.name] = states.get(s.name, ops.free(Ref(s.dims, s.name, STATE)))
    needed = lets_read_by_updates(rec)
    for let in rec.lets:
        if let.name not in needed:
            continue
        value = evaluate(let.expr, env, ops)
        env[let.name] = ops.free(Ref(let.expr.dims, let.name, LET)) if ops.is_free(value) else value
    return {u.name: evaluate(u.expr, env, ops) for u in rec.updates}

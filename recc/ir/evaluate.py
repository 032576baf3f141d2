"""One evaluator for the IR, parameterised by what a value is.

Stage: ir. `step(rec, ops, env)` runs one time step of a recurrence: the lets
in order, then every update from the old states (simultaneously), then the
outputs from the new states. What a "value" is comes from `ops`: a torch
tensor (the interpreter), a numpy array of sympy expressions (the analysis),
or an abstract value (canonical-form extraction). Every executor and analysis
shares this one definition of the language's semantics.
"""

from __future__ import annotations

from typing import Any, Protocol

from recc.ir.nodes import Apply, Const, Dims, Expr, Recurrence, Ref, embed


class Ops(Protocol):
    def const(self, node: Const) -> Any: ...

    def apply(self, node: Apply, args: list[Any]) -> Any: ...


def evaluate(expr: Expr, env: dict[str, Any], ops: Ops) -> Any:
    if isinstance(expr, Const):
        return ops.const(expr)
    if isinstance(expr, Ref):
        return env[expr.name]
    assert isinstance(expr, Apply)
    return ops.apply(expr, [evaluate(arg, env, ops) for arg in expr.args])


def evaluate_shared(
    exprs: list[Expr], env: dict[str, Any], ops: Ops, memo: dict[Expr, Any] | None = None
) -> list[Any]:
    """`evaluate` for several expressions, each distinct node computed once (a
    derivative's expressions share their subtrees). `memo` carries the values
    across calls."""
    memo = {} if memo is None else memo

    def value(expr: Expr) -> Any:
        if isinstance(expr, Const):
            return ops.const(expr)
        if isinstance(expr, Ref):
            return env[expr.name]
        assert isinstance(expr, Apply)
        if expr not in memo:
            memo[expr] = ops.apply(expr, [value(a) for a in expr.args])
        return memo[expr]

    return [value(e) for e in exprs]


def step(
    rec: Recurrence, ops: Ops, env: dict[str, Any], outputs: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One step: `env` binds inputs, params and (old) states.

    Returns (new states by name, outputs by name).
    """
    env = dict(env)
    for let in rec.lets:
        env[let.name] = evaluate(let.expr, env, ops)
    new_states = {u.name: evaluate(u.expr, env, ops) for u in rec.updates}
    if not outputs:
        return new_states, {}
    out_env = {**env, **new_states}
    outs = {o.name: evaluate(o.expr, out_env, ops) for o in rec.outputs}
    return new_states, outs


def align(value: Any, dims: Dims, target: Dims) -> Any:
    """Reshape an array whose trailing axes are `dims` so it broadcasts against `target`.

    Works for torch tensors and numpy arrays alike (both have reshape/shape):
    leading (batch) axes are kept, and size-1 axes are inserted where `target`
    has a dim that `dims` lacks (name-based broadcasting, see `embed`).
    """
    if dims == target:
        return value
    positions = embed(dims, target)
    assert positions is not None, (dims, target)
    lead = tuple(value.shape[: len(value.shape) - len(dims)])
    trailing = [1] * len(target)
    for axis, pos in enumerate(positions):
        trailing[pos] = value.shape[len(lead) + axis]
    return value.reshape(lead + tuple(trailing))

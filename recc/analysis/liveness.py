"""Which states a step reads: a state nothing reads is seen only as a final state.

Stage: analysis. A state that no update and no output reads (directly or
through lets) has values at steps 0..T-2 that nothing uses; only its last
value leaves the recurrence, as a final state. The sequential interpreter
therefore differentiates its update at the last step alone. A backend that
evaluates every step's update at once and differentiates all of them would
multiply the earlier steps' zero cotangents by their local derivatives, and
where one is infinite (`sqrt` at 0, `log` at 0) 0 * inf is NaN: a gradient the
spec does not have. The backends compute such a state's final from its update
at the last step (`recc.interpreter.last_step`), never its history.
"""

from __future__ import annotations

from dataclasses import replace

from recc.ir.nodes import STATE, Expr, Recurrence, Ref, lets_read, walk


def states_read(rec: Recurrence, expr: Expr) -> set[str]:
    """The states `expr` reads, directly or through lets."""
    lets = {let.name: let.expr for let in rec.lets}
    seen: set[str] = set()
    found: set[str] = set()
    todo = [expr]
    while todo:
        for node in walk(todo.pop()):
            if not isinstance(node, Ref):
                continue
            if node.role == STATE:
                found.add(node.name)
            elif node.name in lets and node.name not in seen:
                seen.add(node.name)
                todo.append(lets[node.name])
    return found


def unread_states(rec: Recurrence) -> tuple[str, ...]:
    """States no update and no output reads, in declaration order."""
    read: set[str] = set()
    for d in (*rec.updates, *rec.outputs):
        read |= states_read(rec, d.expr)
    return tuple(s.name for s in rec.states if s.name not in read)


def without_states(rec: Recurrence, names: set[str]) -> Recurrence:
    """The spec minus these states, their updates and the lets only they needed.

    Only for states nothing else reads (`unread_states`): the rest of the spec
    computes exactly what it did."""
    keep = [*(u for u in rec.updates if u.name not in names), *rec.outputs]
    needed = lets_read(rec, [d.expr for d in keep])
    assert not any(states_read(rec, d.expr) & names for d in keep), names
    return replace(
        rec,
        states=tuple(s for s in rec.states if s.name not in names),
        updates=tuple(u for u in rec.updates if u.name not in names),
        lets=tuple(let for let in rec.lets if let.name in needed),
    )

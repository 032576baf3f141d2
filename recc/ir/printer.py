"""IR -> `.rec` text: print a `Recurrence` back as a spec.

Stage: ir. Imports only recc.ir and recc.errors.

`to_source(rec)` is the inverse of the frontend on everything the builder
produces: `build_ir(parse(to_source(rec))) == rec` (IR equality ignores spans
and the original text). Parentheses are the fewest the grammar needs:

    level 1  a + b, a - b          left-associative
    level 2  a * b, a / b, a @ b   left-associative
    level 3  -a                    unary minus
    level 4  a.T                   postfix transpose
    level 5  names, numbers, calls, (parenthesised)

Numbers print so that they read back as the same float (`repr`, or the
integer when it is one; `inf`). The grammar has no negative literal inside an
expression (`-1` is unary minus applied to 1), so the builder never makes a
negative `Const` there; should an IR built by hand hold one, it prints as a
unary minus applied to its magnitude, which computes the same value but
re-parses to `Apply("neg", Const(x))`, not to the `Const`. NaN has no
spelling in the language and raises ValueError.
"""

from __future__ import annotations

import math

from recc.ir.build import FUNCTIONS
from recc.ir.nodes import Apply, Const, Expr, Recurrence, Ref

__all__ = ["expr_to_source", "number_to_source", "to_source"]

# IR op -> spec function name, for ops spelled as calls.
_CALLS = {op: name for name, (op, _) in FUNCTIONS.items() if op != "transpose"}
_INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2), "matmul": ("@", 2)}
_UNARY, _POSTFIX, _ATOM = 3, 4, 5


def number_to_source(value: float) -> str:
    """A float as the grammar reads it back exactly (possibly with a leading '-')."""
    value = float(value)
    if math.isnan(value):
        raise ValueError("NaN cannot be written in a .rec spec")
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if (
        value.is_integer()
        and abs(value) < 1e16
        and not (value == 0 and math.copysign(1, value) < 0)
    ):
        return str(int(value))
    return repr(value)  # shortest string that round-trips; '-0.0' keeps its sign


def _expr(expr: Expr) -> tuple[str, int]:
    """(text, precedence level of the text's outermost construct)."""
    if isinstance(expr, Const):
        text = number_to_source(expr.value)
        return text, (_UNARY if text.startswith("-") else _ATOM)
    if isinstance(expr, Ref):
        return expr.name, _ATOM
    if not isinstance(expr, Apply):  # pragma: no cover - the IR has three node kinds
        raise TypeError(f"not an IR expression: {expr!r}")
    op, args = expr.op, expr.args
    if op in _INFIX:
        symbol, level = _INFIX[op]
        left = _wrap(args[0], level)  # left-associative: same level on the left is fine
        right = _wrap(args[1], level + 1)
        return f"{left} {symbol} {right}", level
    if op == "neg":
        return "-" + _wrap(args[0], _UNARY), _UNARY
    if op == "transpose":
        return _wrap(args[0], _POSTFIX) + ".T", _POSTFIX
    if op in _CALLS:
        inner = ", ".join(_expr(a)[0] for a in args)
        return f"{_CALLS[op]}({inner})", _ATOM
    raise ValueError(f"unknown IR op {op!r}")


def _wrap(expr: Expr, level: int) -> str:
    text, own = _expr(expr)
    return text if own >= level else f"({text})"


def expr_to_source(expr: Expr) -> str:
    """One IR expression as spec text."""
    return _expr(expr)[0]


def _shape(name: str, dims: tuple[str, ...]) -> str:
    return f"{name}[{', '.join(dims)}]" if dims else name


def to_source(rec: Recurrence) -> str:
    """The whole recurrence as a `.rec` spec that builds back to an equal IR."""
    lines = [f"recurrence {rec.name} {{"]
    if rec.dims:
        lines.append(f"  dims   {', '.join(rec.dims)}")
    if rec.inputs:
        lines.append(f"  input  {', '.join(_shape(t.name, t.dims) for t in rec.inputs)}")
    if rec.params:
        lines.append(f"  param  {', '.join(_shape(t.name, t.dims) for t in rec.params)}")
    for s in rec.states:
        lines.append(f"  state  {_shape(s.name, s.dims)} = {number_to_source(s.init)}")
    for d in rec.lets:
        lines.append(f"  let    {d.name} = {expr_to_source(d.expr)}")
    for d in rec.updates:
        lines.append(f"  update {d.name} = {expr_to_source(d.expr)}")
    for d in rec.outputs:
        if isinstance(d.expr, Ref) and d.expr.name == d.name:
            lines.append(f"  output {d.name}")
        else:
            lines.append(f"  output {d.name} = {expr_to_source(d.expr)}")
    lines.append("}")
    return "\n".join(lines) + "\n"

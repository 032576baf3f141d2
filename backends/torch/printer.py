"""Print a spec's step as plain torch code: the CPU path of `recc build` modules.

Stage: backend (torch). Input: the spec's IR; output: the source of a Python
function `step(*inputs at t, *params, *dims read as values, *old states) ->
(new states, outputs)` that computes what `recc.interpreter` computes for one
step: the lets in order, then every update from the old states
(simultaneously), then the outputs from the new states. Broadcasting is by
dim name (`recc.ir.evaluate.align`): an operand lacking some of its node's
dims is indexed with `None` where they go. Each op prints from `PRINT`, a
format string per op of the op table (`recc/ir/ops.py`); max and min print
as `maximum` / `minimum` (recc's tie rule and NaN propagation,
`recc/ir/ties.py`, which built modules carry). The printer knows these node types and ops
and raises on anything else.

A constant operand prints as a Python number where torch takes one with the
same result as the interpreter's 0-d constant (an operator with a tensor on
the other side, pow's exponent, max/min's second operand); elsewhere it is a
0-d tensor in the compute dtype, made from the step's first argument
(`x.new_tensor(1.0)`), so a constant subexpression is computed in that dtype
as the interpreter computes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from recc.backends.names import Namespace, comment_text, docstring_text
from recc.errors import Span
from recc.ir.nodes import Apply, Const, Expr, Recurrence, Ref, lets_read

# op -> torch expression; {0}, {1} are the operands as printed
PRINT = {
    "add": "{0} + {1}",
    "sub": "{0} - {1}",
    "mul": "{0} * {1}",
    "div": "{0} / {1}",
    "neg": "-{0}",
    "max": "maximum({0}, {1})",
    "min": "minimum({0}, {1})",
    "pow": "torch.pow({0}, {1})",
    "exp": "torch.exp({0})",
    "exp2": "torch.exp2({0})",
    "log": "torch.log({0})",
    "sqrt": "torch.sqrt({0})",
    "abs": "torch.abs({0})",
    "sigmoid": "torch.sigmoid({0})",
    "log_sigmoid": "torch.nn.functional.logsigmoid({0})",
    "tanh": "torch.tanh({0})",
    "softplus": "torch.nn.functional.softplus({0})",
    "relu": "torch.relu({0})",
    "silu": "torch.nn.functional.silu({0})",
    "cos": "torch.cos({0})",
    "sin": "torch.sin({0})",
}
# Python's precedence of the operators above (higher binds tighter); calls are atoms
_ATOM, _UNARY = 4, 3
_LEVEL = {"add": 1, "sub": 1, "mul": 2, "div": 2, "neg": _UNARY}
# operands that may be Python numbers (torch takes them as it takes a 0-d tensor)
_SCALAR_OK = {
    "add": (0, 1),
    "sub": (0, 1),
    "mul": (0, 1),
    "div": (0, 1),
    "pow": (1,),
    "max": (1,),
    "min": (1,),
}
# The structural ops, printed as recc.interpreter.TorchOps computes them.
STRUCTURAL = ("matmul", "outer", "dot", "sum", "transpose")
# names the printed code uses at module level
MODULE_NAMES = ("torch", "maximum", "minimum")


class Unprintable(Exception):
    """A node or op the printer does not know (a new op needs its PRINT line)."""


def _number(value: float) -> str:
    if math.isnan(value):
        return 'float("nan")'
    if math.isinf(value):
        return 'float("inf")' if value > 0 else '-float("inf")'
    return repr(float(value))


@dataclass(frozen=True)
class _Printed:
    text: str
    level: int


class _Printer:
    def __init__(self, names: dict[str, str], like: str) -> None:
        self.names = names  # spec name -> local identifier
        self.like = like  # a step argument in the compute dtype, for constant tensors

    def tensor_const(self, value: float) -> _Printed:
        return _Printed(f"{self.like}.new_tensor({_number(value)})", _ATOM)

    def top(self, expr: Expr) -> str:
        """A definition's value: always a tensor."""
        if isinstance(expr, Const):
            return self.tensor_const(expr.value).text
        return self.expr(expr).text

    def expr(self, expr: Expr) -> _Printed:
        if isinstance(expr, Ref):
            return _Printed(self.names[expr.name], _ATOM)
        if isinstance(expr, Const):  # only where a number is allowed (see `operand`)
            text = _number(expr.value)
            return _Printed(text, _UNARY if text.startswith("-") else _ATOM)
        if not isinstance(expr, Apply):
            raise Unprintable(f"no torch printing for node {type(expr).__name__}")
        if expr.op in STRUCTURAL:
            return self.structural(expr)
        if expr.op not in PRINT:
            raise Unprintable(f"no torch printing for op '{expr.op}'")
        level = _LEVEL.get(expr.op, _ATOM)
        has_tensor = any(not isinstance(a, Const) for a in expr.args)
        operands = []
        for i, arg in enumerate(expr.args):
            if isinstance(arg, Const) and not (has_tensor and i in _SCALAR_OK.get(expr.op, ())):
                printed = self.tensor_const(arg.value)
            else:
                printed = self.expr(arg)
            if not isinstance(arg, Const) and arg.dims != expr.dims:
                printed = self.aligned(printed, arg.dims, expr.dims)
            if expr.op == "neg":
                need = printed.level <= _UNARY
            elif level == _ATOM:
                need = False
            else:  # left-to-right: a right operand of equal precedence keeps its brackets
                need = printed.level < level or (i == 1 and printed.level == level)
            operands.append(f"({printed.text})" if need else printed.text)
        return _Printed(PRINT[expr.op].format(*operands), level)

    def atom(self, expr: Expr) -> str:
        printed = self.expr(expr)
        return printed.text if printed.level == _ATOM else f"({printed.text})"

    def aligned(self, printed: _Printed, dims, target) -> _Printed:
        """Name-based broadcasting: `None` where `target` has a dim `dims` lacks."""
        index, i = [], 0
        for dim in target:
            if i < len(dims) and dims[i] == dim:
                index.append(":")
                i += 1
            else:
                index.append("None")
        if i != len(dims):  # pragma: no cover - the IR's shapes embed
            raise Unprintable(f"dims {dims} do not embed in {target}")
        text = printed.text if printed.level == _ATOM else f"({printed.text})"
        return _Printed(f"{text}[..., {', '.join(index)}]", _ATOM)

    def structural(self, expr: Apply) -> _Printed:
        op, args = expr.op, expr.args
        if op == "matmul":
            a, b = (self.atom(x) for x in args)
            da, db = len(args[0].dims), len(args[1].dims)
            if da == 2 and db == 1:
                return _Printed(f"({a} @ {b}.unsqueeze(-1)).squeeze(-1)", _ATOM)
            if da == 1 and db == 2:
                return _Printed(f"({a}.unsqueeze(-2) @ {b}).squeeze(-2)", _ATOM)
            if da == 1 and db == 1:
                return _Printed(f"({a} * {b}).sum(-1)", _ATOM)
            return _Printed(f"{a} @ {b}", 2)
        if op == "outer":
            a, b = (self.atom(x) for x in args)
            return _Printed(f"{a}.unsqueeze(-1) * {b}.unsqueeze(-2)", 2)
        if op == "dot":
            a, b = (self.atom(x) for x in args)
            return _Printed(f"({a} * {b}).sum(-1)", _ATOM)
        if op == "sum":
            k = len(args[0].dims)
            if k == 0:
                return self.expr(args[0])
            axes = ", ".join(str(-i) for i in range(k, 0, -1))
            return _Printed(f"{self.atom(args[0])}.sum(dim=({axes},))", _ATOM)
        assert op == "transpose"
        return _Printed(f"{self.atom(args[0])}.transpose(-1, -2)", _ATOM)


def _cite(rec: Recurrence, span: Span | None) -> str:
    if span is None:
        return "# (no source line)"
    return "# " + comment_text(f"spec line {span.line}: {rec.line(span)}")


def step_parameters(rec: Recurrence) -> list[tuple[str, str]]:
    """(role, spec name) of a printed step's parameters, in order: the inputs at step
    t, the params, the dims read as values, the old states (`runtime.run_steps`)."""
    return [
        *(("input", i.name) for i in rec.inputs),
        *(("param", p.name) for p in rec.params),
        *(("param", d) for d in rec.dim_values),
        *(("state", s.name) for s in rec.states),
    ]


def print_step(rec: Recurrence, module: Namespace, name: str) -> list[str]:
    """The lines of `def <name>(...)`: one step of `rec`, as the interpreter runs it.
    `module` is the module's namespace (its names are never shadowed)."""
    ns = module.child()
    params = step_parameters(rec)
    names = {n: ns.name(("arg", n), n) for _, n in params}
    like = names[rec.inputs[0].name]
    lines = [
        f"def {name}({', '.join(names[n] for _, n in params)}):",
        f'    """One step of `{docstring_text(rec.name)}`, as recc\'s interpreter runs it: '
        "the lets, then",
        '    every update from the old states, then the outputs from the new states."""',
    ]
    printer = _Printer(names, like)
    for let in rec.lets:
        local = ns.name(("let", let.name), let.name)
        lines += [f"    {_cite(rec, let.span)}", f"    {local} = {printer.top(let.expr)}"]
        names[let.name] = local
    new = {}
    for u in rec.updates:
        new[u.name] = ns.name(("new", u.name), f"{u.name}_new")
        lines += [f"    {_cite(rec, u.span)}", f"    {new[u.name]} = {printer.top(u.expr)}"]
    # the outputs read the new states (and the lets, computed from the old ones)
    out_names = {**names, **new}
    out_printer = _Printer(out_names, like)
    outs = []
    for o in rec.outputs:
        local = ns.name(("out", o.name), o.name)
        lines += [f"    {_cite(rec, o.span)}", f"    {local} = {out_printer.top(o.expr)}"]
        outs.append(local)
    states = ", ".join(new[s.name] for s in rec.states)
    lines.append(f"    return ({states},), ({', '.join(outs)},)")
    return lines


def print_last_step(rec: Recurrence, states: tuple[str, ...], module: Namespace, name: str):
    """The lines of `def <name>(*inputs at T-1, *params, *dims as values)`: the updates
    of `states` (states nothing reads, whose updates read no state) at the last step,
    through only the lets they need (`recc.interpreter.last_step`)."""
    ns = module.child()
    params = [p for p in step_parameters(rec) if p[0] != "state"]
    names = {n: ns.name(("arg", n), n) for _, n in params}
    like = names[rec.inputs[0].name]
    exprs = [rec.update_of(s) for s in states]
    needed = lets_read(rec, exprs)
    lines = [
        f"def {name}({', '.join(names[n] for _, n in params)}):",
        f'    """The updates of {", ".join(docstring_text(s) for s in states)} at the last step: '
        "states nothing reads,",
        '    seen only as final states (their earlier values reach nothing)."""',
    ]
    printer = _Printer(names, like)
    for let in rec.lets:
        if let.name in needed:
            local = ns.name(("let", let.name), let.name)
            lines += [f"    {_cite(rec, let.span)}", f"    {local} = {printer.top(let.expr)}"]
            names[let.name] = local
    results = []
    for s in states:
        local = ns.name(("new", s), f"{s}_new")
        u = next(u for u in rec.updates if u.name == s)
        lines += [f"    {_cite(rec, u.span)}", f"    {local} = {printer.top(u.expr)}"]
        results.append(local)
    lines.append(f"    return ({', '.join(results)},)")
    return lines


def step_function(rec: Recurrence):
    """`print_step` executed: the printed step as a Python function (for tests)."""
    import torch

    from recc.ir import ties

    module = Namespace(MODULE_NAMES)
    source = "\n".join(print_step(rec, module, "step"))
    scope = {"torch": torch, "maximum": ties.maximum, "minimum": ties.minimum}
    exec(compile(source, f"<printed step of {rec.name}>", "exec"), scope)  # noqa: S102
    return scope["step"], source

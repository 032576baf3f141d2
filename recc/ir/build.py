"""AST -> IR: resolve names, infer shapes, and check the spec's rules.

Stage: ir. Every rule a spec can break is reported here as a located
`RecError` with a hint that says how to fix the spec; later stages may assume
a well-formed `Recurrence`.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from recc.errors import RecError, Span
from recc.frontend import ast
from recc.frontend.parser import normalize_newlines, parse, too_deep
from recc.ir.evaluate import evaluate
from recc.ir.nodes import (
    INPUT,
    LET,
    PARAM,
    STATE,
    Apply,
    Const,
    Definition,
    Dims,
    Expr,
    Recurrence,
    Ref,
    StateDecl,
    TensorDecl,
    embed,
    walk,
)
from recc.ir.ops import SPELLED

# Spec function name -> (IR op, number of arguments), from the op table.
FUNCTIONS: dict[str, tuple[str, int]] = {name: (op.name, op.arity) for name, op in SPELLED.items()}

# How to write common functions the language does not have.
_INSTEAD = {
    "square": "write x * x or pow(x, 2)",
    "matmul": "use the '@' operator: W @ h",
    "mm": "use the '@' operator: W @ h",
    "mul": "use the '*' operator",
    "log1p": "write log(1 + x)",
    "expm1": "write exp(x) - 1",
    "rsqrt": "write 1 / sqrt(x) or pow(x, -0.5)",
    "neg": "write -x",
    "swish": "silu(x) is x * sigmoid(x)",
    "maximum": "use max(a, b)",
    "minimum": "use min(a, b)",
    "clamp": "combine max and min: min(max(x, lo), hi)",
    "clip": "combine max and min: min(max(x, lo), hi)",
    "T": "transpose with .T or transpose(W)",
}

_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}

# Keyword arguments of a compiled recurrence's call: inputs and params are passed
# by name beside them, so they cannot share these names.
CALL_KEYWORDS = ("initial_state", "output_final_state", "check_nan", "cu_seqlens")


def show(dims: Dims) -> str:
    return "scalar" if not dims else "[" + ", ".join(dims) + "]"


def _signature(function: str) -> str:
    arity = FUNCTIONS[function][1]
    if SPELLED[function].literal_args:
        return f"{function}(x, p)"
    return f"{function}({', '.join('ab'[:arity]) if arity == 2 else 'x'})"


def _suggest(name: str, candidates: list[str], what: str = "names in scope here") -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    if not close:
        lowered = {c.lower(): c for c in candidates}
        close = [lowered[name.lower()]] if name.lower() in lowered else []
    if close:
        return f"did you mean '{close[0]}'?"
    if candidates:
        return f"{what} are: " + ", ".join(sorted(candidates))
    return "declare it with `input`, `param`, `state` or `let` first"


def _line_of(span: Span | None) -> str:
    return f" on line {span.line}" if span is not None else ""


def _name_span(spec: ast.RecurrenceDef, source: str) -> Span | None:
    """Where the recurrence's name is written (`recurrence NAME {`)."""
    span = spec.span
    if span is None:
        return None
    lines = source.split("\n")
    if not 0 < span.line <= len(lines):
        return span
    offset = sum(len(line) + 1 for line in lines[: span.line - 1]) + span.column - 1
    match = re.compile(r"recurrence(?:\s|#[^\n]*)+(" + re.escape(spec.name) + r")\b").match(
        source, offset
    )
    if match is None:
        return Span(span.line, span.column, span.line, span.column + len("recurrence"))
    start = match.start(1)
    line = source.count("\n", 0, start) + 1
    column = start - (source.rfind("\n", 0, start) + 1) + 1
    return Span(line, column, line, column + len(spec.name))


class _Builder:
    def __init__(self) -> None:
        self.dims: dict[str, Span | None] = {}
        self.names: dict[str, tuple[str, Dims, Span | None]] = {}  # name -> (role, dims, span)
        self.later_lets: dict[str, ast.LetDef] = {}  # every let, to explain use-before-def
        self.output_stmts: dict[str, ast.OutputDef] = {}  # `output y = ...` (never readable)
        self.current_let: str | None = None
        self.output_names: dict[str, Span | None] = {}
        self.first_state = "h"
        self.dim_values: set[str] = set()  # dims read as values

    # ---- declarations ----
    def declare(self, name: str, role: str, dims: Dims, span: Span | None) -> None:
        if role in (INPUT, PARAM) and name in CALL_KEYWORDS:
            raise RecError(
                f"{role} '{name}' has the name of a keyword of every call (fn(..., {name}=...))",
                span,
                f"rename the {role}, e.g. '{name}_'; the call keywords are: "
                + ", ".join(CALL_KEYWORDS),
            )
        if name in self.dims:
            raise RecError(
                f"'{name}' is already declared as a dim{_line_of(self.dims[name])}",
                span,
                f"rename the {role} or the dim: dims and tensors share one set of names",
            )
        if name in self.names:
            old_role, _, old_span = self.names[name]
            raise RecError(
                f"'{name}' is defined twice (first as {old_role}{_line_of(old_span)})",
                span,
                "rename one of them; every input, param, state and let needs its own name",
            )
        self.names[name] = (role, dims, span)

    def shape(self, decl: ast.TensorDecl) -> Dims:
        spans = decl.shape_spans or (decl.span,) * len(decl.shape)
        for dim, span in zip(decl.shape, spans, strict=False):
            if dim not in self.dims:
                close = difflib.get_close_matches(dim, list(self.dims), n=1)
                hint = f"add it to the dims line: `dims {', '.join([*self.dims, dim])}`"
                if close:
                    hint = f"did you mean '{close[0]}'? Otherwise {hint}"
                raise RecError(f"unknown dim '{dim}' in the shape of '{decl.name}'", span, hint)
        return decl.shape

    # ---- expressions ----
    def expr(self, node: ast.Node) -> Expr:
        span = node.span
        if isinstance(node, ast.Number):
            return Const((), node.value, span=span)
        if isinstance(node, ast.Name):
            return self.ref(node.name, span)
        if isinstance(node, ast.Neg):
            operand = self.expr(node.operand)
            return Apply(operand.dims, "neg", (operand,), span=span)
        if isinstance(node, ast.Transpose):
            return self.transpose(self.expr(node.operand), span, ".T")
        if isinstance(node, ast.BinOp):
            left = self.expr(node.left)
            right = self.expr(node.right)
            if node.op == "@":
                return self.matmul(left, right, span)
            return self.elementwise(_BINOPS[node.op], left, right, span, node.op)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise AssertionError(f"unexpected AST node {node!r}")  # pragma: no cover

    def ref(self, name: str, span: Span | None) -> Ref:
        if name in self.names:
            role, dims, _ = self.names[name]
            return Ref(dims, name, role, span=span)
        if name == self.current_let:
            raise RecError(
                f"'{name}' is used in its own definition",
                span,
                "a let cannot refer to itself; to carry a value from step to step, "
                f"declare `state {name}[...] = 0` and write `update {name} = ...`",
            )
        if name in self.later_lets:
            line = _line_of(self.later_lets[name].span)
            raise RecError(
                f"'{name}' is used before its definition{line}",
                span,
                f"lets are read in order: move `let {name} = ...` above this line",
            )
        if name in self.dims:  # its size, a scalar (bound at every call)
            self.dim_values.add(name)
            return Ref((), name, PARAM, span=span)
        if name in FUNCTIONS:
            raise RecError(
                f"'{name}' is a function, not a value",
                span,
                f"call it with its argument{'s' if FUNCTIONS[name][1] > 1 else ''}: "
                f"{_signature(name)}",
            )
        if name in self.output_stmts:
            raise RecError(
                f"'{name}' is an output; outputs cannot be read by other statements",
                span,
                "outputs are computed after the updates; compute the value in a let "
                f"(`let {name}_ = ...`) and use that here",
            )
        raise RecError(f"unknown name '{name}'", span, _suggest(name, list(self.names)))

    def elementwise(self, op: str, a: Expr, b: Expr, span: Span | None, symbol: str) -> Apply:
        if a.dims == b.dims:
            return Apply(a.dims, op, (a, b), span=span)
        small, large = (a, b) if len(a.dims) <= len(b.dims) else (b, a)
        try:
            fits = embed(small.dims, large.dims)
        except ValueError:
            raise RecError(
                f"ambiguous broadcast of {show(small.dims)} against {show(large.dims)} "
                f"in '{symbol}'",
                span,
                "shapes broadcast by dim name, and this fits more than one way; declare "
                "distinct dims (e.g. `dims K, V`) so each axis has its own name, or make "
                "the matrix explicit with outer(u, v)",
            ) from None
        if fits is None:
            where = f"'{symbol}'" if symbol in "+-*/" else f"{symbol}()"
            if sorted(a.dims) == sorted(b.dims) and len(a.dims) == 2:
                hint = "the dims are in a different order: transpose one side with .T"
            elif symbol == "*" and len(a.dims) == 1 and len(b.dims) == 1:
                hint = (
                    f"for the {show(a.dims + b.dims)} matrix of all products write "
                    "outer(a, b); for a sum of products write dot(a, b) with equal dims"
                )
            else:
                hint = (
                    "broadcasting is by dim name: both sides need the same dims, or one "
                    "side's dims must appear in the other's (e.g. [D] with [D, N]); "
                    "check that you meant these two tensors"
                )
            raise RecError(
                f"shape mismatch in {where}: {show(a.dims)} and {show(b.dims)}", span, hint
            )
        return Apply(large.dims, op, (a, b), span=span)

    def matmul(self, a: Expr, b: Expr, span: Span | None) -> Apply:
        if not a.dims or not b.dims:
            raise RecError(
                f"'@' needs vectors or matrices, got {show(a.dims)} @ {show(b.dims)}",
                span,
                "to scale by a scalar use '*' instead of '@'",
            )
        if len(a.dims) > 2 or len(b.dims) > 2:
            raise RecError(
                f"'@' takes vectors and matrices, got {show(a.dims)} @ {show(b.dims)}",
                span,
                "for tensors of 3 or more dims, multiply elementwise with '*' "
                "(broadcast by dim name) instead",
            )
        inner_a = a.dims[-1]
        inner_b = b.dims[0]
        if inner_a != inner_b:
            hint = "the last dim on the left must equal the first dim on the right"
            if len(b.dims) == 2 and b.dims[1] == inner_a:
                hint += "; transpose the right side with .T"
            elif len(a.dims) == 2 and a.dims[0] == inner_b:
                hint += "; transpose the left side with .T"
            elif len(a.dims) == 1 and len(b.dims) == 1:
                hint = "for [A] and [B] vectors write outer(a, b); '@' of vectors needs one dim"
            else:
                hint += "; check the operands and their declared shapes"
            raise RecError(
                f"shape mismatch in '@': {show(a.dims)} @ {show(b.dims)} "
                f"contracts '{inner_a}' with '{inner_b}'",
                span,
                hint,
            )
        return Apply(a.dims[:-1] + b.dims[1:], "matmul", (a, b), span=span)

    def transpose(self, a: Expr, span: Span | None, spelling: str) -> Apply:
        if len(a.dims) != 2:
            if len(a.dims) == 1:
                hint = (
                    f"remove the {spelling}: a vector needs no transpose, u @ M and M @ u both work"
                )
            elif not a.dims:
                hint = f"remove the {spelling}: a scalar needs no transpose"
            else:
                hint = "only matrices can be transposed; index tensors by dim name instead"
            raise RecError(f"transpose needs a matrix, got {show(a.dims)}", span, hint)
        return Apply(a.dims[::-1], "transpose", (a,), span=span)

    def call(self, node: ast.Call) -> Expr:
        where = node.name_span or node.span
        if node.function not in FUNCTIONS:
            if node.function in _INSTEAD:
                hint = f"'{node.function}' is not built in; {_INSTEAD[node.function]}"
            else:
                hint = _suggest(node.function, list(FUNCTIONS), "the functions")
            if node.function in self.names:
                hint = f"'{node.function}' is a {self.names[node.function][0]}, not a function"
                hint += "; write '*' or '@' to multiply it"
            raise RecError(f"unknown function '{node.function}'", where, hint)
        op, arity = FUNCTIONS[node.function]
        if len(node.args) != arity:
            raise RecError(
                f"{node.function}() takes {arity} argument{'s' if arity > 1 else ''}, "
                f"got {len(node.args)}",
                node.span,
                f"call it as {_signature(node.function)}",
            )
        args = [self.expr(a) for a in node.args]
        span = node.span
        for i in SPELLED[node.function].literal_args:
            args[i] = self.literal(node.function, node.args[i], args[i])
        if op in ("max", "min", "pow"):
            return self.elementwise(op, args[0], args[1], span, node.function)
        if op == "transpose":
            return self.transpose(args[0], span, "transpose()")
        if op == "sum":
            return Apply((), "sum", (args[0],), span=span)
        if op in ("outer", "dot"):
            u, v = args
            if len(u.dims) != 1 or len(v.dims) != 1:
                if op == "outer":
                    hint = (
                        "outer(u, v) builds a matrix from two vectors; to scale a matrix "
                        "by a vector or a scalar use '*' (broadcast by dim name)"
                    )
                else:
                    hint = (
                        "dot(u, v) sums the products of two vectors; for matrices use '@', "
                        "or sum(a * b) for all elements"
                    )
                raise RecError(
                    f"{op}() takes two vectors, got {show(u.dims)} and {show(v.dims)}",
                    span,
                    hint,
                )
            if op == "dot" and u.dims != v.dims:
                raise RecError(
                    f"dot() of {show(u.dims)} and {show(v.dims)}: the dims differ",
                    span,
                    "dot(u, v) needs two vectors over the same dim; for vectors over "
                    "different dims use outer(u, v), or u @ W @ v with a matrix W",
                )
            if op == "dot":
                return Apply((), "dot", (u, v), span=span)
            return Apply(u.dims + v.dims, "outer", (u, v), span=span)
        return Apply(args[0].dims, op, (args[0],), span=span)

    def literal(self, function: str, node: ast.Node, arg: Expr) -> Const:
        """An operand that must be a number (pow's exponent), as a constant."""
        if isinstance(arg, Const):
            return arg
        if isinstance(arg, Apply) and arg.op == "neg" and isinstance(arg.args[0], Const):
            return Const((), -arg.args[0].value, span=arg.span)
        raise RecError(
            f"{function}()'s exponent must be a number",
            node.span,
            "write a literal such as pow(x, 2) or pow(x, -0.5); for an exponent that "
            "varies, write exp(p * log(x)) (for x > 0)",
        )

    # ---- whole spec ----
    def build(self, spec: ast.RecurrenceDef, source: str, filename: str) -> Recurrence:
        inputs: list[TensorDecl] = []
        params: list[TensorDecl] = []
        states: list[StateDecl] = []
        lets: list[Definition] = []
        updates: dict[str, ast.UpdateDef] = {}
        outputs: list[ast.OutputDef] = []
        head = _name_span(spec, source)

        dims_used: set[str] = set()
        # Declarations first, so order of lines does not matter for them.
        for stmt in spec.statements:
            if isinstance(stmt, ast.DimsDecl):
                for name, span in zip(stmt.names, stmt.spans, strict=False):
                    if name in self.dims:
                        first = self.dims[name]
                        same_line = (
                            first is not None and span is not None and first.line == span.line
                        )
                        raise RecError(
                            f"dim '{name}' is declared twice"
                            + ("" if same_line else f" (first{_line_of(first)})"),
                            span,
                            f"remove the second '{name}', or give that dim its own name",
                        )
                    self.dims[name] = span
        for stmt in spec.statements:
            if isinstance(stmt, (ast.InputDecl, ast.ParamDecl)):
                role = INPUT if isinstance(stmt, ast.InputDecl) else PARAM
                for decl in stmt.tensors:
                    dims = self.shape(decl)
                    dims_used.update(dims)
                    self.declare(decl.name, role, dims, decl.span)
                    target = inputs if role == INPUT else params
                    target.append(TensorDecl(decl.name, dims, span=decl.span))
            elif isinstance(stmt, ast.StateDecl):
                dims = self.shape(stmt.tensor)
                dims_used.update(dims)
                self.declare(stmt.tensor.name, STATE, dims, stmt.tensor.span)
                states.append(StateDecl(stmt.tensor.name, dims, stmt.init, span=stmt.span))
        for name, span in self.dims.items():
            if name not in dims_used:
                raise RecError(
                    f"dim '{name}' is declared but no input, param or state uses it",
                    span,
                    "remove it from the dims line, or use it in a shape",
                )
        if states:
            self.first_state = states[0].name
        else:
            raise RecError(
                f"recurrence '{spec.name}' has no state",
                head,
                "declare one, e.g. `state h[D] = 0`, and give it an `update`",
            )
        if not inputs:
            raise RecError(
                f"recurrence '{spec.name}' has no input",
                head,
                "the sequence length comes from the inputs: declare at least one, "
                "e.g. `input x[D]` (a time-invariant tensor is a `param`)",
            )

        # Every let and output name up front, to explain a use before its line.
        for stmt in spec.statements:
            if isinstance(stmt, ast.LetDef):
                self.later_lets.setdefault(stmt.name, stmt)
            elif isinstance(stmt, ast.OutputDef) and stmt.expr is not None:
                self.output_stmts.setdefault(stmt.name, stmt)

        # Lets, updates and outputs in order; a let is visible after its line.
        for stmt in spec.statements:
            if isinstance(stmt, ast.LetDef):
                self.current_let = stmt.name
                expr = self.expr(stmt.expr)
                self.current_let = None
                self.declare(stmt.name, LET, expr.dims, stmt.name_span)
                lets.append(Definition(stmt.name, expr, span=stmt.span))
            elif isinstance(stmt, ast.UpdateDef):
                self.check_update_target(stmt, updates)
                updates[stmt.name] = stmt
            elif isinstance(stmt, ast.OutputDef):
                outputs.append(stmt)
        self.later_lets.clear()
        # Updates and outputs see every let (they run after all lets).
        update_defs: dict[str, Definition] = {}
        for name, stmt in updates.items():
            expr = self.expr(stmt.expr)
            want = self.names[name][1]
            if expr.dims != want:
                raise RecError(
                    f"update of '{name}' has shape {show(expr.dims)}, "
                    f"but the state is {show(want)}",
                    stmt.expr.span,
                    _reshape_hint(name, expr.dims, want),
                )
            update_defs[name] = Definition(name, expr, span=stmt.span)
        for state in states:
            if state.name not in update_defs:
                raise RecError(
                    f"state '{state.name}' is never updated",
                    state.span,
                    f"add `update {state.name} = ...`; if it never changes, make it a `param`",
                )
        output_defs = [self.output(stmt) for stmt in outputs]
        if not output_defs:
            raise RecError(
                f"recurrence '{spec.name}' has no output",
                head,
                f"add e.g. `output {states[0].name}` to read the state at every step",
            )
        return Recurrence(
            name=spec.name,
            dims=tuple(self.dims),
            inputs=tuple(inputs),
            params=tuple(params),
            states=tuple(states),
            lets=tuple(lets),
            updates=tuple(update_defs[s.name] for s in states),
            outputs=tuple(output_defs),
            dim_values=tuple(d for d in self.dims if d in self.dim_values),
            source=source,
            filename=filename,
        )

    def check_update_target(self, stmt: ast.UpdateDef, seen: dict[str, ast.UpdateDef]) -> None:
        span = stmt.name_span or stmt.span
        states = [n for n, (role, _, _) in self.names.items() if role == STATE]
        if stmt.name not in self.names:
            if stmt.name in self.later_lets:
                role = LET
            else:
                close = difflib.get_close_matches(stmt.name, states, n=1)
                hint = f"declare it first: `state {stmt.name}[...] = 0`"
                if close:
                    hint = f"did you mean '{close[0]}'? Otherwise {hint}"
                raise RecError(f"update of unknown state '{stmt.name}'", span, hint)
        else:
            role = self.names[stmt.name][0]
        if role != STATE:
            article = "an" if role == INPUT else "a"
            shape = show(self.names[stmt.name][1]) if stmt.name in self.names else "[...]"
            shape = "" if shape == "scalar" else shape
            hint = {
                INPUT: "inputs come fresh at every step; to keep a value across steps, "
                f"declare a state (e.g. `state {stmt.name}_acc{shape} = 0`) and update that",
                PARAM: "params are constant over the sequence; if it should change from "
                f"step to step, declare it as `state {stmt.name}{shape} = 0` instead",
                LET: "a let is recomputed at every step: change its `let "
                f"{stmt.name} = ...` line, or, to carry it across steps, declare it "
                "as a `state` instead",
            }[role]
            raise RecError(
                f"'{stmt.name}' is {article} {role}, not a state; only states can be updated",
                span,
                hint,
            )
        if stmt.name in seen:
            first = seen[stmt.name].span
            raise RecError(
                f"state '{stmt.name}' is updated twice (first{_line_of(first)})",
                span,
                "updates are simultaneous: write one `update` per state, "
                "and use `let` for intermediate values",
            )

    def output(self, stmt: ast.OutputDef) -> Definition:
        span = stmt.name_span or stmt.span
        if stmt.name in self.output_names:
            raise RecError(
                f"output '{stmt.name}' is defined twice "
                f"(first{_line_of(self.output_names[stmt.name])})",
                span,
                f"rename one of them, e.g. `output {stmt.name}2 = ...`",
            )
        if stmt.expr is None:
            other = self.output_stmts.get(stmt.name)
            if other is not None and stmt.name not in self.names:
                raise RecError(
                    f"output '{stmt.name}' is defined twice (also{_line_of(other.span)})",
                    span,
                    f"rename one of them, e.g. `output {stmt.name}2 = ...`",
                )
            expr: Expr = self.ref(stmt.name, span)
        else:
            if stmt.name in self.names and self.names[stmt.name][0] != STATE:
                role = self.names[stmt.name][0]
                raise RecError(
                    f"output '{stmt.name}' has the name of {role} '{stmt.name}'",
                    span,
                    f"give the output its own name, e.g. `output {stmt.name}_out = ...`",
                )
            expr = self.expr(stmt.expr)
        if not any(isinstance(node, Ref) for node in walk(expr)):
            raise RecError(
                f"output '{stmt.name}' reads nothing",
                stmt.expr.span if stmt.expr is not None else span,
                "an output is recomputed at every step: make it read a state "
                f"(e.g. `output {stmt.name} = {self.first_state} * ...`), or drop it",
            )
        self.output_names[stmt.name] = span
        return Definition(stmt.name, expr, span=stmt.span)


def _reshape_hint(name: str, got: Dims, want: Dims) -> str:
    extra = [d for d in got if d not in want]
    missing = [d for d in want if d not in got]
    if sorted(got) == sorted(want):
        return "the dims are in a different order: transpose the value with .T"
    plural = len(extra) > 1
    if extra and not missing and not want:
        return (
            f"the state is a scalar: reduce the value with sum(...) or dot(u, v), "
            f"or declare `state {name}{show(got)} = ...`"
        )
    if extra and not missing:
        return (
            f"the value has the extra dim{'s' if plural else ''} {', '.join(extra)}: "
            f"contract {'them' if plural else 'it'} with '@', dot() or sum(), "
            f"or declare `state {name}{show(got)} = ...`"
        )
    if missing and not extra:
        plural = len(missing) > 1
        declared = f"`state {name}{show(got) if got else ''} = ...`"
        return (
            f"the value lacks the dim{'s' if plural else ''} {', '.join(missing)}: "
            f"combine it with a tensor that has {'them' if plural else 'it'} "
            f"(with '*' or outer()), or declare {declared}"
        )
    return f"the new value must have exactly the state's shape {show(want)}"


# How deeply operators may nest in one expression, with the lets it reads written
# out (as the analysis writes them: it evaluates every let into the update with
# sympy, whose recursion grows with this depth).
MAX_NESTING = 200


class _DepthOps:
    def const(self, node: Const) -> int:
        return 0

    def apply(self, node: Apply, args: list[int]) -> int:
        return 1 + max(args, default=0)


def _check_nesting(rec: Recurrence) -> None:
    env: dict[str, int] = {d.name: 0 for d in (*rec.inputs, *rec.value_params(), *rec.states)}
    ops = _DepthOps()
    for definition in (*rec.lets, *rec.updates, *rec.outputs):
        depth = evaluate(definition.expr, env, ops)
        if definition in rec.lets:
            env[definition.name] = depth
        if depth > MAX_NESTING:
            raise RecError(
                f"this expression nests {depth} operators deep, with the lets it reads "
                f"written out; recc handles up to {MAX_NESTING}",
                definition.span,
                "the analysis writes every let out into the update, so a long chain of "
                "lets counts as one expression: shorten the chain, or compute part of it "
                "before the recurrence and pass it in as an input",
            )


def build_ir(spec: ast.RecurrenceDef, source: str = "", filename: str = "<spec>") -> Recurrence:
    try:
        rec = _Builder().build(spec, source, filename)
        _check_nesting(rec)
        return rec
    except RecError as err:
        raise err.with_source(source, filename) from None
    except RecursionError:
        raise too_deep(filename) from None


def load(path_or_source: str | Path) -> Recurrence:
    """A spec from a `.rec` path or from source text, parsed and checked.

    Errors name the file as it was given (a relative path stays relative).
    """
    text = str(path_or_source)
    if isinstance(path_or_source, Path) or _looks_like_path(text):
        path = Path(path_or_source)
        if not path.is_file():
            raise RecError(
                f"{path} is a folder, not a spec file"
                if path.is_dir()
                else f"no such spec file: {path}",
                hint="check the path (or pass the spec's text, which contains `recurrence`)",
            )
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            reason = err.reason if isinstance(err, UnicodeDecodeError) else err.strerror
            raise RecError(
                f"cannot read spec file {path}: {reason}",
                hint="a spec is a UTF-8 (plain ASCII) text file",
            ) from None
        filename = str(path_or_source)
    else:
        source, filename = text, "<spec>"
    source = normalize_newlines(source)
    return build_ir(parse(source, filename), source, filename)


def _looks_like_path(text: str) -> bool:
    if not text.strip() or "{" in text or "\n" in text or "\0" in text:
        return False
    if text.endswith(".rec"):
        return True
    try:
        return Path(text).exists()
    except (OSError, ValueError):
        return False

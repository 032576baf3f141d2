"""AST -> IR: resolve names, infer shapes, and check the spec's rules.

Stage: ir. Every rule a spec can break is reported here as a located
`RecError` with a hint; later stages may assume a well-formed `Recurrence`.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from recc.errors import RecError, Span
from recc.frontend import ast
from recc.frontend.parser import parse
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

# Spec function name -> (IR op, number of arguments).
FUNCTIONS: dict[str, tuple[str, int]] = {
    "exp": ("exp", 1),
    "log": ("log", 1),
    "sigmoid": ("sigmoid", 1),
    "tanh": ("tanh", 1),
    "softplus": ("softplus", 1),
    "relu": ("relu", 1),
    "silu": ("silu", 1),
    "sqrt": ("sqrt", 1),
    "abs": ("abs", 1),
    "max": ("max", 2),
    "min": ("min", 2),
    "outer": ("outer", 2),
    "dot": ("dot", 2),
    "sum": ("sum", 1),
    "transpose": ("transpose", 1),
}

_BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


def show(dims: Dims) -> str:
    return "scalar" if not dims else "[" + ", ".join(dims) + "]"


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=1)
    if close:
        return f"did you mean '{close[0]}'?"
    if candidates:
        return "names in scope here are: " + ", ".join(sorted(candidates))
    return "declare it with `input`, `param`, `state` or `let` first"


class _Builder:
    def __init__(self) -> None:
        self.dims: dict[str, Span | None] = {}
        self.names: dict[str, tuple[str, Dims, Span | None]] = {}  # name -> (role, dims, span)

    # ---- declarations ----
    def declare(self, name: str, role: str, dims: Dims, span: Span | None) -> None:
        if name in self.dims:
            raise RecError(
                f"'{name}' is already declared as a dim",
                span,
                "give the tensor a different name from every dim",
            )
        if name in self.names:
            old_role, _, old_span = self.names[name]
            where = f" on line {old_span.line}" if old_span else ""
            raise RecError(
                f"'{name}' is defined twice (first as {old_role}{where})",
                span,
                "rename one of them; every input, param, state and let needs its own name",
            )
        self.names[name] = (role, dims, span)

    def shape(self, decl: ast.TensorDecl) -> Dims:
        for dim, span in zip(decl.shape, decl.shape_spans or [decl.span] * len(decl.shape)):
            if dim not in self.dims:
                hint = f"add it to the dims line: `dims {', '.join([*self.dims, dim])}`"
                raise RecError(f"unknown dim '{dim}' in the shape of '{decl.name}'", span, hint)
        return decl.shape

    # ---- expressions ----
    def expr(self, node: ast.Node, in_output: bool = False) -> Expr:
        span = node.span
        if isinstance(node, ast.Number):
            return Const((), node.value, span=span)
        if isinstance(node, ast.Name):
            return self.ref(node.name, span, in_output)
        if isinstance(node, ast.Neg):
            operand = self.expr(node.operand, in_output)
            return Apply(operand.dims, "neg", (operand,), span=span)
        if isinstance(node, ast.Transpose):
            return self.transpose(self.expr(node.operand, in_output), span)
        if isinstance(node, ast.BinOp):
            left = self.expr(node.left, in_output)
            right = self.expr(node.right, in_output)
            if node.op == "@":
                return self.matmul(left, right, span)
            return self.elementwise(_BINOPS[node.op], left, right, span, node.op)
        if isinstance(node, ast.Call):
            return self.call(node, in_output)
        raise AssertionError(f"unexpected AST node {node!r}")  # pragma: no cover

    def ref(self, name: str, span: Span | None, in_output: bool) -> Ref:
        if name in self.names:
            role, dims, _ = self.names[name]
            return Ref(dims, name, role, span=span)
        if name in self.dims:
            raise RecError(
                f"'{name}' is a dim, not a value",
                span,
                "dims are sizes known at call time; they cannot be used in expressions",
            )
        if name in FUNCTIONS:
            raise RecError(f"'{name}' is a function", span, f"call it: {name}(...)")
        raise RecError(f"unknown name '{name}'", span, _suggest(name, list(self.names)))

    def elementwise(self, op: str, a: Expr, b: Expr, span: Span | None, symbol: str) -> Apply:
        if a.dims == b.dims:
            return Apply(a.dims, op, (a, b), span=span)
        small, large = (a, b) if len(a.dims) <= len(b.dims) else (b, a)
        try:
            fits = embed(small.dims, large.dims)
        except ValueError:
            raise RecError(
                f"ambiguous broadcast of {show(small.dims)} against {show(large.dims)} in '{symbol}'",
                span,
                "shapes broadcast by dim name; when a dim repeats, declare two dims "
                "(e.g. `dims K, V`) so each axis has its own name",
            ) from None
        if fits is None:
            hint = "elementwise operands must have the same dims, or one's dims inside the other's"
            if len(a.dims) == 1 and len(b.dims) == 1:
                hint = "for a [A] x [B] -> [A, B] product write outer(a, b)"
            raise RecError(
                f"shape mismatch in '{symbol}': {show(a.dims)} and {show(b.dims)}", span, hint
            )
        return Apply(large.dims, op, (a, b), span=span)

    def matmul(self, a: Expr, b: Expr, span: Span | None) -> Apply:
        if not a.dims or not b.dims:
            raise RecError(
                f"'@' needs vectors or matrices, got {show(a.dims)} @ {show(b.dims)}",
                span,
                "use '*' to scale by a scalar",
            )
        if len(a.dims) > 2 or len(b.dims) > 2:
            raise RecError("'@' takes vectors and matrices only", span, None)
        inner_a = a.dims[-1]
        inner_b = b.dims[0]
        if inner_a != inner_b:
            raise RecError(
                f"shape mismatch in '@': {show(a.dims)} @ {show(b.dims)} "
                f"contracts '{inner_a}' with '{inner_b}'",
                span,
                "the last dim on the left must equal the first dim on the right; "
                "transpose one side with .T",
            )
        return Apply(a.dims[:-1] + b.dims[1:], "matmul", (a, b), span=span)

    def transpose(self, a: Expr, span: Span | None) -> Apply:
        if len(a.dims) != 2:
            raise RecError(
                f"transpose needs a matrix, got {show(a.dims)}",
                span,
                "a vector needs no transpose: u @ M and M @ u both work",
            )
        return Apply(a.dims[::-1], "transpose", (a,), span=span)

    def call(self, node: ast.Call, in_output: bool) -> Expr:
        where = node.name_span or node.span
        if node.function not in FUNCTIONS:
            raise RecError(
                f"unknown function '{node.function}'",
                where,
                _suggest(node.function, list(FUNCTIONS)).replace("names in scope here", "functions"),
            )
        op, arity = FUNCTIONS[node.function]
        if len(node.args) != arity:
            raise RecError(
                f"{node.function}() takes {arity} argument{'s' if arity > 1 else ''}, "
                f"got {len(node.args)}",
                node.span,
                None,
            )
        args = [self.expr(a, in_output) for a in node.args]
        span = node.span
        if op in ("max", "min"):
            return self.elementwise(op, args[0], args[1], span, node.function)
        if op == "transpose":
            return self.transpose(args[0], span)
        if op == "sum":
            return Apply((), "sum", (args[0],), span=span)
        if op in ("outer", "dot"):
            u, v = args
            if len(u.dims) != 1 or len(v.dims) != 1:
                raise RecError(
                    f"{op}() takes two vectors, got {show(u.dims)} and {show(v.dims)}", span, None
                )
            if op == "dot":
                if u.dims != v.dims:
                    raise RecError(
                        f"dot() of {show(u.dims)} and {show(v.dims)}: the dims differ", span, None
                    )
                return Apply((), "dot", (u, v), span=span)
            return Apply(u.dims + v.dims, "outer", (u, v), span=span)
        return Apply(args[0].dims, op, (args[0],), span=span)

    # ---- whole spec ----
    def build(self, spec: ast.RecurrenceDef, source: str, filename: str) -> Recurrence:
        inputs: list[TensorDecl] = []
        params: list[TensorDecl] = []
        states: list[StateDecl] = []
        lets: list[Definition] = []
        updates: dict[str, tuple[ast.UpdateDef, Definition | None]] = {}
        outputs: list[tuple[ast.OutputDef, Definition | None]] = []

        dims_used: set[str] = set()
        # Declarations first, so order of lines does not matter for them.
        for stmt in spec.statements:
            if isinstance(stmt, ast.DimsDecl):
                for name, span in zip(stmt.names, stmt.spans):
                    if name in self.dims or name in self.names:
                        raise RecError(f"dim '{name}' is declared twice", span, "remove one")
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
        if not states:
            raise RecError(
                f"recurrence '{spec.name}' has no state",
                spec.span,
                "declare one, e.g. `state h[D] = 0`, and give it an `update`",
            )

        # Lets, updates and outputs in order; a let is visible after its line.
        for stmt in spec.statements:
            if isinstance(stmt, ast.LetDef):
                expr = self.expr(stmt.expr)
                self.declare(stmt.name, LET, expr.dims, stmt.name_span)
                lets.append(Definition(stmt.name, expr, span=stmt.span))
            elif isinstance(stmt, ast.UpdateDef):
                self.check_update_target(stmt, updates)
                updates[stmt.name] = (stmt, None)
            elif isinstance(stmt, ast.OutputDef):
                outputs.append((stmt, None))
        # Updates and outputs see every let (they run after all lets).
        update_defs: dict[str, Definition] = {}
        for name, (stmt, _) in updates.items():
            expr = self.expr(stmt.expr)
            want = self.names[name][1]
            if expr.dims != want:
                raise RecError(
                    f"update of '{name}' has shape {show(expr.dims)}, but the state is {show(want)}",
                    stmt.expr.span,
                    "the new value must have exactly the state's shape",
                )
            update_defs[name] = Definition(name, expr, span=stmt.span)
        for state in states:
            if state.name not in update_defs:
                raise RecError(
                    f"state '{state.name}' is never updated",
                    state.span,
                    f"add `update {state.name} = ...`, or make it a `param` if it is constant",
                )
        output_defs = [self.output(stmt, spec) for stmt, _ in outputs]
        if not output_defs:
            raise RecError(
                f"recurrence '{spec.name}' has no output",
                spec.span,
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
            source=source,
            filename=filename,
        )

    def check_update_target(self, stmt: ast.UpdateDef, seen: dict) -> None:
        span = stmt.name_span or stmt.span
        if stmt.name not in self.names:
            raise RecError(
                f"update of unknown state '{stmt.name}'",
                span,
                f"declare it first: `state {stmt.name}[...] = 0`",
            )
        role = self.names[stmt.name][0]
        if role != STATE:
            raise RecError(
                f"'{stmt.name}' is {'an' if role == INPUT else 'a'} {role}, not a state",
                span,
                "only states are updated; declare it with `state` to carry it across steps",
            )
        if stmt.name in seen:
            raise RecError(
                f"state '{stmt.name}' is updated twice",
                span,
                "updates are simultaneous: write one `update` per state, "
                "and use `let` for intermediate values",
            )

    def output(self, stmt: ast.OutputDef, spec: ast.RecurrenceDef) -> Definition:
        span = stmt.name_span or stmt.span
        if stmt.expr is None:
            if stmt.name not in self.names:
                raise RecError(
                    f"unknown name '{stmt.name}' in output",
                    span,
                    _suggest(stmt.name, list(self.names)),
                )
            expr: Expr = self.ref(stmt.name, span, True)
        else:
            if stmt.name in self.names and self.names[stmt.name][0] != STATE:
                raise RecError(
                    f"output '{stmt.name}' has the name of {self.names[stmt.name][0]} "
                    f"'{stmt.name}'",
                    span,
                    "give the output its own name",
                )
            expr = self.expr(stmt.expr, in_output=True)
        if not any(isinstance(node, Ref) for node in walk(expr)):
            raise RecError(
                f"output '{stmt.name}' reads nothing",
                stmt.expr.span if stmt.expr is not None else span,
                "an output reads the state (or inputs); a constant output is never useful",
            )
        if stmt.name in self.output_names:
            raise RecError(f"output '{stmt.name}' is defined twice", span, "rename one")
        self.output_names.add(stmt.name)
        return Definition(stmt.name, expr, span=stmt.span)

    output_names: set[str]


def build_ir(spec: ast.RecurrenceDef, source: str = "", filename: str = "<spec>") -> Recurrence:
    builder = _Builder()
    builder.output_names = set()
    try:
        return builder.build(spec, source, filename)
    except RecError as err:
        raise err.with_source(source, filename) from None


def load(path_or_source: str | Path) -> Recurrence:
    """A spec from a `.rec` path or from source text, parsed and checked."""
    text = str(path_or_source)
    if isinstance(path_or_source, Path) or (
        "{" not in text and (text.endswith(".rec") or Path(text).exists())
    ):
        path = Path(path_or_source)
        if not path.exists():
            raise RecError(f"no such spec file: {path}", hint="check the path")
        source, filename = path.read_text(), str(path)
    else:
        source, filename = text, "<spec>"
    return build_ir(parse(source, filename), source, filename)

"""The AST of a `.rec` spec: what the user wrote, with source spans.

Stage: frontend. Frozen dataclasses; spans do not take part in equality.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recc.errors import Span


@dataclass(frozen=True)
class Node:
    span: Span | None = field(default=None, compare=False, repr=False, kw_only=True)


# ---- expressions ----------------------------------------------------------


@dataclass(frozen=True)
class Number(Node):
    value: float


@dataclass(frozen=True)
class Name(Node):
    name: str


@dataclass(frozen=True)
class BinOp(Node):
    op: str  # one of + - * / @
    left: Node
    right: Node


@dataclass(frozen=True)
class Neg(Node):
    operand: Node


@dataclass(frozen=True)
class Transpose(Node):
    operand: Node


@dataclass(frozen=True)
class Call(Node):
    function: str
    args: tuple[Node, ...]
    name_span: Span | None = field(default=None, compare=False, repr=False)


# ---- declarations and definitions -----------------------------------------


@dataclass(frozen=True)
class TensorDecl(Node):
    """`k[D]` in an input, param or state line; `shape` holds dim names."""

    name: str
    shape: tuple[str, ...]
    shape_spans: tuple[Span | None, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class DimsDecl(Node):
    names: tuple[str, ...]
    spans: tuple[Span | None, ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class InputDecl(Node):
    tensors: tuple[TensorDecl, ...]


@dataclass(frozen=True)
class ParamDecl(Node):
    tensors: tuple[TensorDecl, ...]


@dataclass(frozen=True)
class StateDecl(Node):
    tensor: TensorDecl
    init: float


@dataclass(frozen=True)
class LetDef(Node):
    name: str
    expr: Node
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class UpdateDef(Node):
    name: str
    expr: Node
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class OutputDef(Node):
    name: str
    expr: Node | None  # `output h` is `output h = h`
    name_span: Span | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RecurrenceDef(Node):
    name: str
    statements: tuple[Node, ...]

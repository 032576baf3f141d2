"""Parse `.rec` text into the AST (`recc.frontend.ast`).

Stage: frontend. Uses the one grammar file `grammar/rec.lark` (installed as
`recc.grammar`); every syntax problem becomes a located `RecError`.
"""

from __future__ import annotations

import functools
from importlib import resources

import lark
from lark import Token, Transformer, v_args

from recc.errors import RecError, Span
from recc.frontend import ast

# How lark's terminal names read to a user.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "EQUAL": "'='",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "AT": "'@'",
    "__ANON_0": "'.T'",
}

_KEYWORDS = ("dims", "input", "param", "state", "let", "update", "output")


@functools.cache
def _parser() -> lark.Lark:
    text = resources.files("recc.grammar").joinpath("rec.lark").read_text()
    return lark.Lark(text, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _span(meta_or_token: object) -> Span | None:
    line = getattr(meta_or_token, "line", None)
    if line is None:
        return None
    return Span(
        line,
        meta_or_token.column,  # type: ignore[attr-defined]
        meta_or_token.end_line,  # type: ignore[attr-defined]
        meta_or_token.end_column,  # type: ignore[attr-defined]
    )


@v_args(meta=True)
class _ToAst(Transformer):
    """lark parse tree -> frozen AST nodes carrying spans."""

    def start(self, meta, children):
        return children[0]

    def recurrence(self, meta, children):
        name, *statements = children
        return ast.RecurrenceDef(str(name), tuple(statements), span=_span(meta))

    def dims_decl(self, meta, names):
        return ast.DimsDecl(
            tuple(str(n) for n in names), tuple(_span(n) for n in names), span=_span(meta)
        )

    def shape(self, meta, names):
        return names

    def tensor_decl(self, meta, children):
        name, shape = children[0], children[1] if len(children) > 1 else None
        dims = tuple(str(n) for n in shape) if shape else ()
        spans = tuple(_span(n) for n in shape) if shape else ()
        return ast.TensorDecl(str(name), dims, spans, span=_span(meta))

    def input_decl(self, meta, tensors):
        return ast.InputDecl(tuple(tensors), span=_span(meta))

    def param_decl(self, meta, tensors):
        return ast.ParamDecl(tuple(tensors), span=_span(meta))

    def state_decl(self, meta, children):
        tensor, init = children
        return ast.StateDecl(tensor, init.value, span=_span(meta))

    def let_def(self, meta, children):
        name, expr = children
        return ast.LetDef(str(name), expr, name_span=_span(name), span=_span(meta))

    def update_def(self, meta, children):
        name, expr = children
        return ast.UpdateDef(str(name), expr, name_span=_span(name), span=_span(meta))

    def output_def(self, meta, children):
        name, expr = children[0], children[1] if len(children) > 1 else None
        return ast.OutputDef(str(name), expr, name_span=_span(name), span=_span(meta))

    # ---- expressions ----
    def number(self, meta, children):
        return ast.Number(float(children[0]), span=_span(meta))

    def neg_number(self, meta, children):
        return ast.Number(-float(children[0]), span=_span(meta))

    def inf(self, meta, children):
        return ast.Number(float("inf"), span=_span(meta))

    def neg_inf(self, meta, children):
        return ast.Number(float("-inf"), span=_span(meta))

    def name(self, meta, children):
        return ast.Name(str(children[0]), span=_span(meta))

    def _binop(op):  # noqa: N805 - a factory used while building the class
        def build(self, meta, children):
            return ast.BinOp(op, children[0], children[1], span=_span(meta))

        return build

    add = _binop("+")
    sub = _binop("-")
    mul = _binop("*")
    div = _binop("/")
    matmul = _binop("@")

    def neg(self, meta, children):
        return ast.Neg(children[0], span=_span(meta))

    def transpose(self, meta, children):
        return ast.Transpose(children[0], span=_span(meta))

    def call(self, meta, children):
        name, *args = children
        args = tuple(a for a in args if a is not None)
        return ast.Call(str(name), args, name_span=_span(name), span=_span(meta))


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "the end of the file"
    return repr(str(token))


def _syntax_error(err: lark.exceptions.UnexpectedInput, source: str) -> RecError:
    line, column = max(err.line, 1), max(err.column, 1)
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        char = source[err.pos_in_stream] if err.pos_in_stream < len(source) else "?"
        span = Span(line, column, line, column + 1)
        hint = "names are letters, digits and '_'; operators are + - * / @ and .T"
        if char == "*" or char == "^":
            hint = "there is no power operator; write x * x, or exp(p * log(x))"
        return RecError(f"unexpected character {char!r}", span, hint)
    if isinstance(err, lark.exceptions.UnexpectedEOF):
        last = source.rstrip().splitlines() or [""]
        n = len(last)
        span = Span(n, max(len(last[-1]), 1), n, max(len(last[-1]), 1) + 1)
        return RecError(
            "the spec ended too early", span, "is a closing '}' or ')' missing?"
        )
    assert isinstance(err, lark.exceptions.UnexpectedToken)
    token = err.token
    expected = sorted({_TERMINAL_WORDS.get(t, t.lower().strip("_")) for t in err.expected})
    if token.type == "$END":
        lines = source.rstrip().splitlines() or [""]
        span = Span(len(lines), max(len(lines[-1]), 1), len(lines), max(len(lines[-1]), 1) + 1)
    else:
        span = Span(line, column, token.end_line or line, token.end_column or column + 1)
    message = f"unexpected {_describe_token(token)}"
    hint = "expected " + (", ".join(expected) if len(expected) <= 6 else "a statement or expression")
    text = str(token)
    if text in _KEYWORDS and token.type != "NAME":
        hint = f"'{text}' is a keyword and starts a new statement; {hint}"
    if token.type == "RECURRENCE" or (text == "recurrence" and err.state is not None):
        hint = "a file holds exactly one `recurrence NAME { ... }`"
    if "'{'" in expected and token.type == "NAME":
        hint = "a recurrence's name is one word: `recurrence my_rnn { ... }`"
    return RecError(message, span, hint)


def parse(source: str, filename: str = "<spec>") -> ast.RecurrenceDef:
    """Parse one recurrence. Raises RecError (located, with a hint) on bad syntax."""
    try:
        tree = _parser().parse(source)
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, source).with_source(source, filename) from None
    return _ToAst().transform(tree)

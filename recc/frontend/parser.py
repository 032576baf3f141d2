"""Parse `.rec` text into the AST (`recc.frontend.ast`).

Stage: frontend. Uses the one grammar file `grammar/rec.lark` (installed as
`recc.grammar`); every syntax problem becomes a located `RecError`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from importlib import resources

import lark
from lark import Transformer, v_args

from recc.errors import RecError, Span
from recc.frontend import ast


@functools.cache
def _parser() -> lark.Lark:
    text = resources.files("recc.grammar").joinpath("rec.lark").read_text()
    return lark.Lark(
        text, parser="lalr", lexer="basic", propagate_positions=True, maybe_placeholders=True
    )


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


def _finite(token: lark.Token, meta: object) -> float:
    """A number literal's value; one too large for a float is an error, not inf."""
    value = float(token)
    if value == float("inf"):
        raise RecError(
            f"the number {token} is too large for a floating-point value",
            _span(token) or _span(meta),
            "write `inf` if you mean infinity (a bound of max/min or a state's initial "
            "value), or a smaller number",
        )
    return value


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
        return ast.Number(_finite(children[0], meta), span=_span(meta))

    def neg_number(self, meta, children):
        return ast.Number(-_finite(children[0], meta), span=_span(meta))

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


# ---- syntax errors ----------------------------------------------------------
#
# lark reports the token it could not use and the terminals it would have
# accepted. That alone makes poor messages ("unexpected 'output'" when the
# line above ends in '+'), so the error is explained with a little context:
# the tokens before it (re-lexed here; the language has no strings, so this is
# a one-line regex), the statement they belong to, and unclosed brackets.

_STATEMENT_KEYWORDS = ("dims", "input", "param", "state", "let", "update", "output")
_RESERVED = (*_STATEMENT_KEYWORDS, "recurrence", "inf")
_KEYWORD_TYPES = {word.upper() for word in _RESERVED}
_OPERAND_START = {"NAME", "NUMBER", "LPAR", "INF", "MINUS"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "AT", "__ANON_0"}
_PUNCTUATION = {
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
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_PUNCT_TYPE = {")": "RPAR", "]": "RSQB", "}": "RBRACE"}
_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_POWER_HINT = "there is no power operator; write x * x, or exp(p * log(x)) for x > 0"

_LEX = re.compile(
    r"[ \t\f\r\n]+|#[^\n]*"
    r"|(?P<tok>\.T|[A-Za-z_][A-Za-z_0-9]*|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|.)",
    re.DOTALL,
)


@dataclass(frozen=True)
class _Tok:
    """A token of the source as the user sees it (for explaining errors)."""

    text: str
    pos: int
    line: int
    column: int

    @property
    def span(self) -> Span:
        return Span(self.line, self.column, self.line, self.column + len(self.text))

    @property
    def end(self) -> Span:
        """The position just after the token."""
        col = self.column + len(self.text)
        return Span(self.line, col, self.line, col + 1)

    @property
    def is_operand_end(self) -> bool:
        return self.text in (")", ".T", "inf") or self.text[0].isalnum() or self.text[0] in "_."


def _lex(source: str, stop: int) -> list[_Tok]:
    """The tokens of `source` that start before offset `stop`."""
    tokens = []
    line, line_start = 1, 0
    for match in _LEX.finditer(source, 0, max(stop, 0)):
        if match.group("tok") is not None:
            pos = match.start()
            tokens.append(_Tok(match.group(), pos, line, pos - line_start + 1))
        newlines = match.group().count("\n")
        if newlines:
            line += newlines
            line_start = match.start() + match.group().rindex("\n") + 1
    return tokens


def _unclosed(tokens: list[_Tok]) -> list[_Tok]:
    """Opening brackets among `tokens` that are not closed, innermost last."""
    stack: list[_Tok] = []
    for tok in tokens:
        if tok.text in _CLOSERS:
            stack.append(tok)
        elif tok.text in _CLOSERS.values() and stack and _CLOSERS[stack[-1].text] == tok.text:
            stack.pop()
    return stack


def _statement(tokens: list[_Tok]) -> list[_Tok]:
    """The tokens of the statement the last token belongs to (from its keyword)."""
    for i in range(len(tokens) - 1, -1, -1):
        if tokens[i].text in _STATEMENT_KEYWORDS or tokens[i].text in "{}":
            return tokens[i:]
    return []


def _words(expected: set[str]) -> str:
    """What lark expected, in words."""
    parts = []
    names = set(expected)
    if set(t.upper() for t in _STATEMENT_KEYWORDS) <= names:
        parts.append("a statement (" + ", ".join(_STATEMENT_KEYWORDS) + ")")
        names -= {t.upper() for t in _STATEMENT_KEYWORDS}
    if {"NAME", "NUMBER", "LPAR"} <= names:
        parts.append("a value (a name, a number or '(')")
        names -= _OPERAND_START
    if {"PLUS", "STAR", "SLASH", "AT"} <= names:
        parts.append("an operator")
        names -= _OPERATORS
    for name in sorted(names):
        if name == "$END":
            parts.append("the end of the file")
        elif name == "NAME":
            parts.append("a name")
        elif name == "NUMBER":
            parts.append("a number")
        elif name in _PUNCTUATION:
            parts.append(_PUNCTUATION[name])
        else:
            parts.append(f"'{name.lower()}'")
    if len(parts) <= 1:
        return "".join(parts) or "something else"
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _describe(tok: _Tok | None) -> str:
    if tok is None:
        return "the end of the file"
    if tok.text in _RESERVED:
        return f"keyword '{tok.text}'"
    return f"'{tok.text}'"


def _unexpected_character(source: str, pos: int, line: int, column: int) -> RecError:
    char = source[pos] if pos < len(source) else "?"
    span = Span(line, column, line, column + 1)
    hint = (
        "names are letters, digits and '_'; operators are + - * / @ and .T; "
        "comments start with '#'; remove or replace the character"
    )
    if char == "^":
        hint = _POWER_HINT
    elif char == ";":
        hint = (
            "statements need no separator: remove the ';' and start each statement on its own line"
        )
    elif char == ".":
        hint = "transpose is written '.T' (capital T); decimals like 0.5 need a digit after '.'"
    elif char == "'":
        hint = "transpose is written '.T', e.g. W.T @ h"
    elif char in "<>!|&?":
        hint = "there are no comparisons or conditions; use max(a, b), min(a, b), relu or abs"
    elif char == "%":
        hint = "there is no '%' operator; use + - * / @ and the built-in functions"
    elif char == ":":
        hint = "shapes are written in brackets after the name, e.g. `input k[D]`"
    elif char == '"':
        hint = "there are no strings in a spec; comments start with '#'"
    elif not char.isascii():
        hint = "a spec is plain ASCII: names are letters, digits and '_'; retype the character"
    return RecError(f"unexpected character {char!r}", span, hint)


def _unexpected_end(tokens: list[_Tok], expected: set[str]) -> RecError:
    if not tokens:
        return RecError(
            "the spec is empty",
            Span(1, 1, 1, 2),
            "start with `recurrence my_rnn {`, then its dims, inputs, states, updates and "
            "outputs, and close it with '}'",
        )
    last = tokens[-1]
    opened = _unclosed(tokens)
    if opened and opened[-1].text != "{":
        tok = opened[-1]
        return RecError(
            f"the '{tok.text}' on line {tok.line} is never closed",
            tok.span,
            f"add the matching '{_CLOSERS[tok.text]}', then close the recurrence with '}}'",
        )
    if expected & {"NAME", "NUMBER"} and "RBRACE" not in expected:
        return RecError(
            f"the spec ends in the middle of a statement, after '{last.text}'",
            last.end,
            f"finish the statement, then close the recurrence with '}}' ({_words(expected)} "
            "was expected next)",
        )
    if "RBRACE" in expected:
        header = tokens[:3]
        name = header[1].text if len(header) > 1 else "?"
        brace_line = opened[0].line if opened else 1
        return RecError(
            f"recurrence '{name}' is never closed",
            last.end,
            f"add '}}' at the end to close `recurrence {name} {{` from line {brace_line}",
        )
    return RecError("the spec ends too early", last.end, f"{_words(expected)} was expected next")


def _unexpected_token(err: lark.exceptions.UnexpectedToken, source: str) -> RecError:
    expected = {"$END" if name == "<END-OF-FILE>" else name for name in err.expected}
    token = err.token
    pos = token.start_pos if token.type != "$END" and token.start_pos is not None else len(source)
    before = _lex(source, pos)
    if token.type == "$END":
        return _unexpected_end(before, expected)
    line = source.count("\n", 0, pos) + 1
    here = _Tok(str(token), pos, line, pos - source.rfind("\n", 0, pos))
    prev = before[-1] if before else None
    statement = _statement(before)
    keyword = statement[0].text if statement else ""
    after = source[pos + len(here.text) :].lstrip(" \t")
    wants_operand = "NUMBER" in expected
    opened = _unclosed(before)
    inner = opened[-1] if opened and opened[-1].text != "{" else None
    text = here.text

    # -- the header and what surrounds the one recurrence
    if expected == {"RECURRENCE"}:
        return RecError(
            f"unexpected {_describe(here)}: a spec starts with `recurrence NAME {{`",
            here.span,
            "put the statements inside `recurrence my_rnn { ... }`",
        )
    if expected == {"$END"}:
        if text == "recurrence":
            hint = "a file holds exactly one recurrence; put the others in files of their own"
        else:
            hint = (
                "everything goes inside `recurrence NAME { ... }`: "
                "is there a '}' too many above, or is this line after the closing '}'?"
            )
        return RecError(
            f"unexpected {_describe(here)} after the end of the recurrence", here.span, hint
        )
    if keyword == "" and prev is not None and prev.text == "recurrence":
        return RecError(
            f"unexpected {_describe(here)}: the recurrence needs a name",
            here.span,
            "write `recurrence my_rnn {` (a name of letters, digits and '_')",
        )
    if expected == {"LBRACE"}:
        if token.type == "NAME":
            joined = f"{prev.text}_{text}" if prev else "my_rnn"
            hint = f"a recurrence's name is one word: join the words with '_', e.g. `{joined}`"
            return RecError(
                f"unexpected {_describe(here)} in the recurrence's name", here.span, hint
            )
        return RecError(
            f"expected '{{' after the recurrence's name, found {_describe(here)}",
            here.span,
            "write `recurrence my_rnn {`, the statements, then '}'",
        )

    # -- `//` comments
    if text == "/" and after.startswith("/"):
        return RecError(
            "comments start with '#', not '//'",
            Span(here.line, here.column, here.line, here.column + 2),
            "replace the '//' with '#'",
        )

    # -- a keyword where a name is needed: `let input = ...`
    if token.type in _KEYWORD_TYPES and "NAME" in expected and "NUMBER" not in expected:
        return RecError(
            f"'{text}' is a keyword, not a name",
            here.span,
            f"rename it (e.g. '{text}_'); reserved words are: " + ", ".join(_RESERVED),
        )

    # -- inside a state's initial value: `state h[D] = 0`
    if keyword == "state" and prev is not None and prev.text in ("=", "-") and wants_operand:
        return RecError(
            f"unexpected {_describe(here)}: a state's initial value is a number, inf or -inf",
            here.span,
            "write e.g. `state h[D] = 0`; to start from a tensor, pass initial_state=... "
            "when calling",
        )
    if keyword == "state" and "EQUAL" in expected and text not in ("=", "[", ","):
        name_tok = statement[1] if len(statement) > 1 else here
        return RecError(
            f"state '{name_tok.text}' has no initial value",
            Span(name_tok.line, name_tok.column, prev.line, prev.column + len(prev.text))
            if prev is not None and prev.line == name_tok.line
            else name_tok.span,
            "add one: `state "
            + "".join(t.text + (" " if t.text == "," else "") for t in statement[1:])
            + " = 0` (a number, inf or -inf)",
        )
    if keyword == "state" and prev is not None and "=" in [t.text for t in statement]:
        if token.type in _OPERATORS or token.type == "LPAR":
            return RecError(
                f"unexpected {_describe(here)}: a state's initial value is one constant",
                here.span,
                "write a number, inf or -inf; to start from another value, pass "
                "initial_state=... when calling",
            )

    # -- `let z` / `update h` / `output y` without its '='
    if keyword in ("let", "update", "output") and text == "[" and len(statement) == 2:
        name = statement[1].text
        shape = "the state's shape" if keyword == "update" else "the shape of its expression"
        return RecError(
            f"`{keyword} {name}` takes no shape",
            here.span,
            f"it has {shape}: remove the '[...]' and write `{keyword} {name} = <expression>`",
        )
    if keyword in ("let", "update") and expected == {"EQUAL"}:
        name = statement[1].text if len(statement) > 1 else "x"
        return RecError(
            f"expected '=' after `{keyword} {name}`, found {_describe(here)}",
            here.span,
            f"write `{keyword} {name} = <expression>`",
        )
    if (
        keyword in _STATEMENT_KEYWORDS
        and expected == {"NAME"}
        and prev is not None
        and prev.text == keyword
    ):
        return RecError(
            f"expected a name after '{keyword}', found {_describe(here)}",
            here.span,
            {
                "dims": "write `dims D, N`",
                "input": "write `input x[D]`",
                "param": "write `param W[D, D]`",
                "state": "write `state h[D] = 0`",
                "let": "write `let z = <expression>`",
                "update": "write `update h = <expression>` for a declared state h",
                "output": "write `output h` or `output y = <expression>`",
            }[keyword],
        )

    if expected == {"NAME"} and prev is not None:
        if inner is not None and inner.text == "[":
            hint = "a shape lists dims from the `dims` line, separated by ',': `k[D, N]`"
        elif prev.text == ",":
            hint = "write another name after ',', or remove the trailing ','"
        else:
            hint = "write a name here (letters, digits and '_')"
        return RecError(
            f"expected a name after '{prev.text}', found {_describe(here)}", here.span, hint
        )

    # -- an operand is missing: `a + * b`, `a +` at the end of a line, `f(a,)`
    if wants_operand and prev is not None:
        if text == "*" and prev.text == "*" and prev.pos + 1 == pos:
            return RecError(
                "there is no '**' operator",
                Span(prev.line, prev.column, here.line, here.column + 1),
                _POWER_HINT,
            )
        if text == "=" and prev.text == "=":
            return RecError(
                "unexpected '=='",
                Span(prev.line, prev.column, here.line, here.column + 1),
                "a definition uses one '='; there are no comparisons (use max, min or relu)",
            )
        if text == ")" and prev.text == ",":
            return RecError(
                "missing an argument after ','",
                prev.span,
                "remove the trailing ',' or add the argument",
            )
        if text == ")" and prev.text == "(":
            return RecError(
                "empty parentheses",
                Span(prev.line, prev.column, here.line, here.column + 1),
                "put an expression inside the '( )', or remove them",
            )
        if token.type in _KEYWORD_TYPES or text == "}" or here.line > prev.line:
            opened = _unclosed(before)
            hint = f"finish the expression, or remove the trailing '{prev.text}'"
            if prev.text == "=":
                name = statement[1].text if len(statement) > 1 else "z"
                hint = f"write the value after '=', e.g. `{keyword or 'let'} {name} = 0`"
            return RecError(
                f"missing a value after '{prev.text}'",
                prev.span,
                hint
                if not opened or opened[-1].text == "{"
                else hint + f"; the '{opened[-1].text}' on line {opened[-1].line} is still open",
            )
        return RecError(
            f"missing a value between '{prev.text}' and '{text}'",
            here.span,
            f"write an operand before '{text}', or remove one of the two",
        )

    # -- a closing bracket with no opening one
    if text in (")", "]") and not (inner and _CLOSERS[inner.text] == text):
        return RecError(
            f"unmatched '{text}'",
            here.span,
            f"remove it, or add the matching '{'(' if text == ')' else '['}' before it"
            if inner is None
            else f"the '{inner.text}' on line {inner.line} col {inner.column} "
            f"needs '{_CLOSERS[inner.text]}' first",
        )

    # -- two things in a row on one line: `0.9 h`, `dims D N`, `input k(D)`
    operand = token.type in ("NAME", "NUMBER", "LPAR", "INF")
    same_line = prev is not None and prev.line == here.line
    if operand and prev is not None and same_line and prev.is_operand_end and "PLUS" in expected:
        return RecError(
            f"missing an operator between '{prev.text}' and '{text}'",
            here.span,
            f"there is no implicit multiplication: write `{prev.text} * {text}`",
        )
    if prev is not None and same_line and keyword in ("dims", "input", "param", "state"):
        if token.type == "NAME" and keyword != "state" and prev.text[-1] in "]_" + _ALNUM:
            return RecError(
                f"missing ',' between '{prev.text}' and '{text}'",
                here.span,
                f"separate the names with ',': `{keyword} {prev.text}, {text}`"
                if prev.text != "]"
                else "separate the declarations with ','",
            )
        if text == "(" and inner is None and prev.text[-1] in "_" + _ALNUM:
            return RecError(
                "shapes are written in square brackets",
                here.span,
                f"write `{prev.text}[D]` (dims from the `dims` line, separated by ',')",
            )

    # -- an unclosed bracket before something that cannot be inside it
    if inner is not None and _PUNCT_TYPE[_CLOSERS[inner.text]] in expected:
        close = _CLOSERS[inner.text]
        what = "shape" if inner.text == "[" else "parenthesis"
        where = f" on line {here.line}" if here.line != inner.line else ""
        return RecError(
            f"the '{inner.text}' on line {inner.line} is never closed",
            inner.span,
            f"close the {what} with '{close}' before {_describe(here)}{where}",
        )

    # -- a statement that does not start with a keyword
    if operand and prev is not None and ("PLUS" not in expected or not same_line):
        if token.type == "NAME" and after.startswith("=") and not after.startswith("=="):
            hint = f"did you mean `update {text} = ...` or `let {text} = ...`?"
        else:
            hint = (
                "start it with a keyword (" + ", ".join(_STATEMENT_KEYWORDS) + "), "
                "or join it to the line above with an operator"
            )
        return RecError(
            f"unexpected {_describe(here)} at the start of a statement", here.span, hint
        )
    return RecError(f"unexpected {_describe(here)}", here.span, f"expected {_words(expected)}")


def _syntax_error(err: lark.exceptions.UnexpectedInput, source: str) -> RecError:
    if isinstance(err, lark.exceptions.UnexpectedCharacters):
        return _unexpected_character(
            source, err.pos_in_stream, max(err.line, 1), max(err.column, 1)
        )
    if isinstance(err, lark.exceptions.UnexpectedToken):
        return _unexpected_token(err, source)
    tokens = _lex(source, len(source))  # UnexpectedEOF (not raised by LALR parsers)
    return _unexpected_end(tokens, set(getattr(err, "expected", ()) or ()))


# Control characters a text file never holds (tab, newline, carriage return and
# form feed are whitespace): NUL and friends would also corrupt generated code.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


def normalize_newlines(source: str) -> str:
    """CRLF and CR-only line endings as '\\n', so lines count the same everywhere."""
    return source.replace("\r\n", "\n").replace("\r", "\n")


def _control_character(source: str) -> RecError | None:
    match = _CONTROL.search(source)
    if match is None:
        return None
    pos = match.start()
    line = source.count("\n", 0, pos) + 1
    column = pos - (source.rfind("\n", 0, pos) + 1) + 1
    return RecError(
        f"unexpected control character U+{ord(match.group()):04X}",
        Span(line, column, line, column + 1),
        "a spec is plain text: remove the character (it may be invisible in your editor)",
    )


def parse(source: str, filename: str = "<spec>") -> ast.RecurrenceDef:
    """Parse one recurrence. Raises RecError (located, with a hint) on bad syntax.

    Line endings are read as written (CRLF, CR or LF); `load` normalises them
    before parsing so that spans and the stored source agree."""
    source = normalize_newlines(source)
    bad = _control_character(source)
    if bad is not None:
        raise bad.with_source(source, filename)
    try:
        tree = _parser().parse(source)
    except lark.exceptions.UnexpectedInput as err:
        raise _syntax_error(err, source).with_source(source, filename) from None
    try:
        return _ToAst().transform(tree)
    except RecursionError:
        raise too_deep(filename) from None
    except lark.exceptions.VisitError as err:
        if isinstance(err.orig_exc, RecursionError):
            raise too_deep(filename) from None
        if isinstance(err.orig_exc, RecError):
            raise err.orig_exc.with_source(source, filename) from None
        raise


def too_deep(filename: str) -> RecError:
    """An expression nested deeper than Python's recursion allows (thousands of terms)."""
    return RecError(
        "an expression is nested too deeply to compile",
        hint="split it into several `let` lines",
        filename=filename,
    )

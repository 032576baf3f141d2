"""Line wrapping for generated Python: no line of code wider than `WIDTH`.

Stage: backend (triton), the last pass over a generated module. The
generators write one statement per line, however long; this pass breaks a
long statement at its largest bracket pair, the way a person would:

    R0, U0 = tl.associative_scan(                       <- head and opening bracket
        (ones, a0, h_dh, (a0 * h_dh)), 0, _combine_0, reverse=True
    )                                                   <- closing bracket and tail

and, if the contents still do not fit, one argument per line (with a
trailing comma). A trailing comment that does not fit moves to its own line
above the statement; a comment line that does not fit is cut with "...".
Docstrings are left as written (they quote the spec). The result parses to
the same syntax tree (`tests/test_golden.py` checks every zoo module).
"""

from __future__ import annotations

WIDTH = 100
_OPEN, _CLOSE = "([{", ")]}"


def wrap_source(source: str, width: int = WIDTH) -> str:
    out: list[str] = []
    in_docstring = False
    for line in source.splitlines():
        quotes = line.count('"""')
        if in_docstring or quotes:
            out.append(line)
            if quotes % 2 == 1:
                in_docstring = not in_docstring
            continue
        out += wrap_line(line, width)
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def wrap_line(line: str, width: int = WIDTH) -> list[str]:
    if len(line) <= width:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    code, comment = _split_comment(line.strip())
    if not code:  # a comment line
        return [(indent + comment)[: width - 3] + "..."]
    lines = []
    if comment:
        lines += wrap_line(indent + comment, width)
    lines += _wrap_code(indent, code, width)
    return lines


def _wrap_code(indent: str, code: str, width: int, inside: bool = False) -> list[str]:
    """`code` at `indent` in lines of at most `width` where it can be broken. `inside`:
    the code is within brackets already, so a line break anywhere is only layout."""
    if len(indent) + len(code) <= width:
        return [indent + code]
    inner = indent + "    "
    comma = "," if inside and code.endswith(",") else ""
    code = code[: len(code) - len(comma)]
    target, value = (None, code) if inside else _split_assignment(code)
    if target is not None:
        names = _split_top_level(ungrouped(target))
        if len(names) > 1 and len(indent) + len(target) > width // 2:
            # a long target list: one name per line, then the value
            lines = [indent + "("] + [f"{inner}{n}," for n in names]
            return lines + _wrap_code(indent, f") = {value}", width)
    pair = _largest_pair(value)
    if pair is not None and pair[1] - pair[0] >= len(value) // 2:
        start, end = pair
        head = code[: len(code) - len(value) + start + 1]
        body, tail = value[start + 1 : end], value[end:] + comma
        if len(inner) + len(body.strip()) <= width:
            middle = [inner + body.strip()]
        else:
            parts = _split_top_level(body)
            if len(parts) == 1 and not body.rstrip().endswith(","):  # a grouping
                middle = _wrap_code(inner, parts[0], width, inside=True)
            else:
                middle = [x for part in parts for x in _wrap_code(inner, part + ",", width, True)]
        return [indent + head, *middle, indent + tail]
    for op in _OPERATORS:
        terms = _split_top_level(value, op)
        if len(terms) > 1:
            at = inner if target is not None else indent
            lines = [at + terms[0]] + [f"{at}{op.strip()} {t}" for t in terms[1:]]
            lines[-1] += comma
            if target is not None:  # the value in parentheses, so it may span lines
                return [f"{indent}{target} = (", *lines, indent + ")"]
            if inside:
                return lines
            break
    return [indent + code + comma]  # nothing to break at: left long


# Binary operators a long expression may be broken before, loosest first.
_OPERATORS = (" | ", " & ", " + ", " - ", " * ")


def ungrouped(text: str) -> str:
    """`text` without one pair of brackets around all of it."""
    pairs = _pairs(text)
    if len(pairs) == 1 and pairs[0] == (0, len(text) - 1) and text[0] == "(":
        return text[1:-1]
    return text


def _outside_strings(text: str):
    """(position, character, bracket depth before it) of every character outside
    string literals."""
    depth, quote = 0, None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
            continue
        yield i, ch, depth
        depth += (ch in _OPEN) - (ch in _CLOSE)


def _split_comment(text: str) -> tuple[str, str]:
    """(code, comment) of a line, the comment with its `#`; strings respected."""
    for i, ch, _ in _outside_strings(text):
        if ch == "#":
            return text[:i].rstrip(), text[i:]
    return text, ""


def _pairs(code: str) -> list[tuple[int, int]]:
    """The outermost bracket pairs of `code` (positions of the opening and closing)."""
    pairs, start = [], 0
    for i, ch, depth in _outside_strings(code):
        if ch in _OPEN and depth == 0:
            start = i
        elif ch in _CLOSE and depth == 1:
            pairs.append((start, i))
    return pairs


def _largest_pair(code: str) -> tuple[int, int] | None:
    pairs = [(s, e) for s, e in _pairs(code) if e - s > 1]
    return max(pairs, key=lambda p: p[1] - p[0], default=None)


def _split_assignment(code: str) -> tuple[str | None, str]:
    """(target, value) of `target = value` (a plain `=` outside brackets), else (None, code)."""
    parts = _split_top_level(code, " = ")
    if len(parts) == 2:
        return parts[0], parts[1]
    return None, code


def _split_top_level(body: str, sep: str = ",") -> list[str]:
    """`body` split at `sep` outside brackets and strings (a trailing one dropped)."""
    parts, start = [], 0
    for i, _, depth in _outside_strings(body):
        if depth == 0 and i >= start and body.startswith(sep, i):
            parts.append(body[start:i].strip())
            start = i + len(sep)
    last = body[start:].strip()
    if last:
        parts.append(last)
    return parts

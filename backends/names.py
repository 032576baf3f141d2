"""Every identifier of a generated module, handed out in one place.

Stage: backends (every printer's: the Triton kernels, the torch step). A spec
may name its tensors anything the grammar allows: `lambda`, `None`, `tl`, `T`,
`h_carry`, `_t2`, `i_b`, ... Generated code is Python, and the generator has
names of its own (`tl`, `i_b`, `T`, `{state}_carry`, `_t1`, `BLOCK_D`, ...),
so no identifier is written by pasting strings together: each is asked of a
`Namespace` under a key saying what it stands for, with a preferred spelling.
The first to ask gets the spelling; a later one that would collide (with a
Python keyword or builtin, a module-level name, or an earlier identifier) gets
`spelling_2`, `_3`, ... The same key always gets the same identifier, so the
forward and backward kernels and the launcher agree.

Text from the spec that lands in generated source (the docstring, comments
citing spec lines) goes through `docstring_text` / `comment_text`.
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Hashable, Iterable

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
RESERVED = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))


class Namespace:
    """Unique, valid identifiers for keys; child scopes see their parent's names."""

    def __init__(self, reserved: Iterable[str] = (), parent: Namespace | None = None) -> None:
        self.parent = parent
        self._taken: set[str] = set(reserved) | (set() if parent else set(RESERVED))
        self._by_key: dict[Hashable, str] = {}
        self._counters: dict[str, int] = {}

    def taken(self, name: str) -> bool:
        return name in self._taken or (self.parent is not None and self.parent.taken(name))

    def name(self, key: Hashable, preferred: str) -> str:
        """The identifier for `key`, spelled `preferred` if that is still free."""
        found = self.lookup(key)
        if found is not None:
            return found
        if not _IDENTIFIER.fullmatch(preferred):
            raise ValueError(f"not an identifier: {preferred!r}")  # pragma: no cover
        candidate, n = preferred, 2
        while self.taken(candidate):
            candidate, n = f"{preferred}_{n}", n + 1
        self._taken.add(candidate)
        self._by_key[key] = candidate
        return candidate

    def unique(self, preferred: str) -> str:
        """A new identifier of its own, spelled `preferred` if that is still free."""
        return self.name(object(), preferred)

    def lookup(self, key: Hashable) -> str | None:
        if key in self._by_key:
            return self._by_key[key]
        return self.parent.lookup(key) if self.parent is not None else None

    def fresh(self, prefix: str) -> str:
        """A new temporary: `{prefix}1`, `{prefix}2`, ... skipping taken names."""
        while True:
            n = self._counters.get(prefix, 0) + 1
            self._counters[prefix] = n
            candidate = f"{prefix}{n}"
            if not self.taken(candidate):
                self._taken.add(candidate)
                return candidate

    def child(self) -> Namespace:
        """A scope for one function's parameters and locals."""
        return Namespace(parent=self)


def docstring_text(text: str) -> str:
    """`text` safe inside a triple-quoted (non-raw) docstring: backslashes and
    quotes escaped, control characters spelled out."""
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return "".join(
        c if c in "\n\t" or ord(c) >= 32 and ord(c) != 127 else f"\\x{ord(c):02x}" for c in text
    )


def comment_text(text: str) -> str:
    """`text` safe after '#': one line, control characters spelled out."""
    return "".join(c if ord(c) >= 32 and ord(c) != 127 else f"\\x{ord(c):02x}" for c in text)


def cite(rec, span) -> str:
    """`spec line N: <the line>`, for comments in generated code citing the spec."""
    if span is None:
        return "(no source line)"
    return comment_text(f"spec line {span.line}: {rec.line(span)}")

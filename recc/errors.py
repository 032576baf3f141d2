"""Errors a user can cause, each reported at a place in their spec.

Stage: shared by every stage. Imports nothing from recc.

A `RecError` prints as

    gru.rec:7:14: unknown name 'hh'
        update h = (1 - z) * hh + z * n
                             ^~
    hint: names in scope here are: h, k, n, z

so the user can find and fix the problem without reading a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A region of a spec's source text (1-based line and column)."""

    line: int
    column: int
    end_line: int
    end_column: int


class RecError(Exception):
    """A problem in a spec or in how a compiled recurrence was called."""

    def __init__(
        self,
        message: str,
        span: Span | None = None,
        hint: str | None = None,
        source: str | None = None,
        filename: str | None = None,
    ) -> None:
        self.message = message
        self.span = span
        self.hint = hint
        self.source = source
        self.filename = filename
        super().__init__(self.render())

    def with_source(self, source: str, filename: str) -> RecError:
        """The same error, located in `source` (read from `filename`)."""
        return RecError(self.message, self.span, self.hint, source, filename)

    def render(self) -> str:
        name = self.filename or "<spec>"
        if self.span is None:
            head = f"{name}: {self.message}" if self.filename else self.message
            return head + (f"\n    hint: {self.hint}" if self.hint else "")
        lines = [f"{name}:{self.span.line}:{self.span.column}: {self.message}"]
        if self.source is not None:
            # Split on '\n' only: spans count lines the way the parser does.
            text_lines = self.source.split("\n")
            if 0 < self.span.line <= len(text_lines):
                text = text_lines[self.span.line - 1].rstrip("\r").expandtabs(1)
                text = "".join("?" if ord(c) < 32 or ord(c) == 127 else c for c in text)
                column = max(self.span.column, 1)
                if self.span.end_line == self.span.line:
                    width = max(1, self.span.end_column - column)
                else:
                    width = max(1, len(text) - column + 1)
                lines.append("    " + text)
                lines.append("    " + " " * (column - 1) + "^" + "~" * (width - 1))
        if self.hint:
            lines.append(f"    hint: {self.hint}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.render()

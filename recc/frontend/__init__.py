"""Stage 1, text -> AST: the `.rec` grammar, parser and AST nodes.

May import: recc.errors. Nothing later in the pipeline.
"""

from recc.frontend.parser import parse

__all__ = ["parse"]

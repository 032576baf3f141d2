"""Stage 2, AST -> typed tensor IR: named dims, shape inference, one evaluator.

May import: recc.errors, recc.frontend. Nothing later in the pipeline.
"""

from recc.ir.build import build_ir, load
from recc.ir.nodes import Apply, Const, Definition, Expr, Recurrence, Ref, StateDecl, TensorDecl

__all__ = [
    "Apply",
    "Const",
    "Definition",
    "Expr",
    "Recurrence",
    "Ref",
    "StateDecl",
    "TensorDecl",
    "build_ir",
    "load",
]

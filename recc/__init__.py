"""recc: a compiler for recurrences.

Pipeline (each a subpackage; data flows one way):
  frontend (text -> AST) -> ir (typed tensor IR) -> analysis (classes,
  canonical forms, Jacobians) -> lowering (algorithm per class) ->
  backends (code generation) -> runtime (interpreter, call binding).
"""

from recc.api import CompiledRecurrence, compile
from recc.errors import RecError

__version__ = "0.1.0"
__all__ = ["CompiledRecurrence", "RecError", "compile", "__version__"]

"""Stage 3, IR -> analysis: simplify, classify, canonical forms, Jacobians.

May import: recc.errors, recc.ir. Never a backend, never Triton.
"""

from recc.analysis.classify import analyze
from recc.analysis.forms import Analysis

__all__ = ["Analysis", "analyze"]

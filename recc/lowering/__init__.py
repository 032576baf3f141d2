"""Stage 4, analysis -> lowering plan: which parallel algorithm a class admits.

May import: recc.ir, recc.analysis. Never a backend.
"""

from recc.lowering.plan import LoweringPlan, plan

__all__ = ["LoweringPlan", "plan"]

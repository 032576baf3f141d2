"""Stage 4, analysis -> lowering plan: which parallel algorithm a class admits.

May import: recc.ir, recc.analysis. Never a backend.
"""

from recc.analysis.forms import Analysis, DiagonalBlock, DiagonalForm, MinMaxForm
from recc.lowering.chunk import ChunkPlan, Readout, Write, chunk_plan
from recc.lowering.newton import NewtonPlan, newton_plan
from recc.lowering.plan import (
    AUTO,
    CHUNKWISE,
    NEWTON,
    SCAN,
    SEQUENTIAL,
    STRATEGIES,
    LoweringPlan,
    plan,
)
from recc.lowering.scan import ScanGroup, ScanPlan, old_name, old_state, scan_plan
from recc.lowering.sequential import Hoisted, SequentialPlan, sequential_plan

# The plan's vocabulary: a backend reads the canonical forms through a plan and
# imports them from here, never from recc.analysis.
__all__ = [
    "AUTO",
    "CHUNKWISE",
    "ChunkPlan",
    "Readout",
    "chunk_plan",
    "NEWTON",
    "SCAN",
    "SEQUENTIAL",
    "NewtonPlan",
    "newton_plan",
    "Hoisted",
    "SequentialPlan",
    "sequential_plan",
    "STRATEGIES",
    "Analysis",
    "DiagonalBlock",
    "DiagonalForm",
    "LoweringPlan",
    "MinMaxForm",
    "ScanGroup",
    "ScanPlan",
    "Write",
    "old_name",
    "old_state",
    "plan",
    "scan_plan",
]

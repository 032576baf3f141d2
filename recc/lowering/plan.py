"""Pick the parallel algorithm for an analysed recurrence.

Stage: lowering. One rule per class (DESIGN.md, "the four classes"). A plan
names the algorithm, why it fits, and which executors exist for it today;
until a backend implements an algorithm the plan runs on the interpreter and
says so rather than pretending.
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis.forms import DIAGONAL, DPLR, MINMAX, Analysis, DiagonalForm
from recc.ir.nodes import Recurrence

INTERPRETER = "interpreter"
TORCH = "torch"
TRITON = "triton"
ALL_BACKENDS = (TRITON, TORCH, INTERPRETER)
# In order of preference; "triton" only runs on CUDA tensors (or under
# TRITON_INTERPRET=1), so on the CPU the next one is the default.
SCAN_BACKENDS = (TRITON, TORCH, INTERPRETER)
REFERENCE_ONLY = (INTERPRETER,)


@dataclass(frozen=True)
class LoweringPlan:
    algorithm: str  # short name, e.g. "scan", "chunkwise", "newton"
    description: str  # one line for humans
    why: str
    backends: tuple[str, ...]  # executors available for this spec today, best first

    @property
    def status(self) -> str:
        if self.backends == (INTERPRETER,):
            return f"{self.algorithm} planned; runs on the interpreter until its backend lands"
        return (
            f"{self.algorithm} on {', '.join(self.backends)} "
            "(default: triton for CUDA tensors, else torch; "
            "torch_compile=True fuses the torch scan with torch.compile)"
        )


def plan(rec: Recurrence, analysis: Analysis) -> LoweringPlan:
    kind = analysis.kind
    if kind == DIAGONAL:
        assert isinstance(analysis.form, DiagonalForm)
        matrix = any(len(s.dims) == 2 for s in rec.states)
        k = analysis.form.block_size
        combine = "(a, b) pairs" if k == 1 else f"{k}x{k} matrix pairs"
        if matrix:
            return LoweringPlan(
                "scan",
                f"associative scan on {combine}; matrix state kept on chip, readout fused",
                "diagonal decay: steps compose as a_2*a_1, a_2*b_1 + b_2",
                SCAN_BACKENDS,
            )
        return LoweringPlan(
            "scan",
            f"associative scan on {combine} over time, gates computed in-kernel, readout fused",
            "diagonal linear recurrence: steps compose associatively",
            SCAN_BACKENDS,
        )
    if kind == DPLR:
        return LoweringPlan(
            "chunkwise",
            f"chunkwise WY/UT-transform kernel (rank {analysis.rank}), state passed between chunks",
            "identity-plus-low-rank transitions compose into compact WY form within a chunk",
            REFERENCE_ONLY,
        )
    if kind == MINMAX:
        return LoweringPlan(
            "scan",
            f"associative scan over the {analysis.semiring} semiring",
            "max/min/+ maps of the state compose in closed form",
            SCAN_BACKENDS,
        )
    structure = analysis.jacobian.describe()
    return LoweringPlan(
        "newton",
        f"Newton-parallel solver (DEER/ParaRNN) with a {structure} Jacobian; sequential fallback",
        "no linear structure proven; each Newton iteration is one linear scan",
        REFERENCE_ONLY,
    )

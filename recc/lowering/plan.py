"""Pick the parallel algorithm for an analysed recurrence.

Stage: lowering. One rule per class (DESIGN.md, "the four classes"). A plan
names the algorithm and why it fits, and carries the spec and its analysis;
which executors run it is each backend's answer (`recc.backends.registry`:
`supports(plan)`), so a plan never promises what a backend then declines.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from recc.analysis.classify import linear_states
from recc.analysis.forms import DIAGONAL, DPLR, MINMAX, Analysis, DiagonalForm
from recc.ir.nodes import Recurrence
from recc.lowering.chunk import ChunkPlan, chunk_plan
from recc.lowering.newton import NewtonPlan, newton_plan
from recc.lowering.scan import ScanPlan, scan_plan
from recc.lowering.sequential import SequentialPlan, sequential_plan

SCAN = "scan"
CHUNKWISE = "chunkwise"
NEWTON = "newton"
SEQUENTIAL = "sequential"


@dataclass(frozen=True, eq=False)
class LoweringPlan:
    algorithm: str  # SCAN, CHUNKWISE, NEWTON or SEQUENTIAL
    description: str  # one line for humans
    why: str
    spec: Recurrence
    analysis: Analysis
    scan: ScanPlan | None = None  # SCAN: the facts its backends read (recc.lowering.scan)
    # CHUNKWISE: the same (recc.lowering.chunk); on a SCAN plan of a matrix state, the
    # chunkwise form a backend may run instead for long sequences
    chunk: ChunkPlan | None = None
    no_chunk_plan: str = ""  # why there is no ChunkPlan (CHUNKWISE, or SCAN of a matrix)
    # SEQUENTIAL: the step loop with its state-free work hoisted (recc.lowering.sequential);
    # NEWTON: the fallback and the short-sequence form
    sequential: SequentialPlan | None = None
    # NEWTON: the solver's IR (recc.lowering.newton)
    newton: NewtonPlan | None = None
    no_newton_plan: str = ""  # why a nonlinear spec has none
    # states a linear form reads, which must start finite (checked at call time)
    finite_states: frozenset[str] = frozenset()
    strategy: str = "auto"  # what `strategy=` asked for (NEWTON: Newton at every T)

    @property
    def kind(self) -> str:
        return self.analysis.kind


AUTO = "auto"
STRATEGIES = (AUTO, SCAN, CHUNKWISE, SEQUENTIAL, NEWTON)  # what `strategy=` takes


def plan(rec: Recurrence, analysis: Analysis, strategy: str = AUTO) -> LoweringPlan:
    """The plan for `rec`. `strategy`: AUTO (the class's algorithm, and for a matrix
    state with a linear readout both the scan and the chunkwise form, a backend
    picking by T), or SCAN / CHUNKWISE to keep only that form where the spec has it
    (a plan without it is returned unchanged: the caller reports it), SEQUENTIAL,
    the step loop, which every spec has, or NEWTON (the solver only, where the
    spec has one)."""
    chosen = _plan(rec, analysis)
    if strategy == NEWTON and chosen.newton is not None:
        return replace(
            chosen,
            why=f"{chosen.why}; strategy='newton' was asked for: at every T, on every device",
            strategy=NEWTON,
        )
    if strategy == SEQUENTIAL and chosen.algorithm == NEWTON:
        return replace(
            chosen,
            algorithm=SEQUENTIAL,
            description=_SEQUENTIAL,
            why="strategy='sequential' was asked for",
            newton=None,
            no_newton_plan="strategy='sequential' was asked for",
        )
    if strategy == SEQUENTIAL and chosen.algorithm != SEQUENTIAL:
        return replace(
            chosen,
            algorithm=SEQUENTIAL,
            description=_SEQUENTIAL,
            why="strategy='sequential' was asked for",
            scan=None,
            chunk=None,
            no_chunk_plan="strategy='sequential' was asked for",
            sequential=sequential_plan(rec),
            finite_states=frozenset(),  # the loop takes any start, as the interpreter
        )
    if strategy == SCAN and chosen.scan is not None:
        return replace(chosen, chunk=None, no_chunk_plan="strategy='scan' was asked for")
    if strategy == CHUNKWISE and chosen.chunk is not None and chosen.algorithm == SCAN:
        return replace(
            chosen,
            algorithm=CHUNKWISE,
            description="chunkwise algorithm (rank 0: decay and outer-product writes), "
            "state passed between chunks",
            why="strategy='chunkwise' was asked for",
            scan=None,
        )
    return chosen


def _plan(rec: Recurrence, analysis: Analysis) -> LoweringPlan:
    chosen = _algorithm(rec, analysis)
    finite = frozenset(linear_states(analysis.form))
    if chosen.algorithm == CHUNKWISE:
        facts = chunk_plan(rec, analysis)
        if isinstance(facts, str):
            return replace(chosen, no_chunk_plan=facts, finite_states=finite)
        return replace(chosen, chunk=facts, finite_states=finite)
    facts = scan_plan(rec, analysis) if chosen.algorithm == SCAN else None
    chosen = replace(chosen, scan=facts, finite_states=finite)
    if chosen.algorithm == SCAN and any(len(s.dims) == 2 for s in rec.states):
        # a matrix state read out linearly also runs chunkwise: a backend picks by T
        chunk = chunk_plan(rec, analysis)
        if isinstance(chunk, str):
            return replace(chosen, no_chunk_plan=chunk)
        return replace(chosen, chunk=chunk)
    return chosen


def _algorithm(rec: Recurrence, analysis: Analysis) -> LoweringPlan:
    kind = analysis.kind
    if kind == DIAGONAL:
        assert isinstance(analysis.form, DiagonalForm)
        matrix = any(len(s.dims) == 2 for s in rec.states)
        k = analysis.form.block_size
        combine = "(a, b) pairs" if k == 1 else f"{k}x{k} matrix pairs"
        if matrix:
            return LoweringPlan(
                SCAN,
                f"associative scan on {combine}; matrix state kept on chip, readout fused",
                "diagonal decay: steps compose as a_2*a_1, a_2*b_1 + b_2",
                rec,
                analysis,
            )
        return LoweringPlan(
            SCAN,
            f"associative scan on {combine} over time, gates computed in-kernel, readout fused",
            "diagonal linear recurrence: steps compose associatively",
            rec,
            analysis,
        )
    if kind == DPLR:
        return LoweringPlan(
            CHUNKWISE,
            f"chunkwise WY/UT-transform kernel (rank {analysis.rank}), state passed between chunks",
            "identity-plus-low-rank transitions compose into compact WY form within a chunk",
            rec,
            analysis,
        )
    if kind == MINMAX:
        return LoweringPlan(
            SCAN,
            f"associative scan over the {analysis.semiring} semiring",
            "max/min/+ maps of the state compose in closed form",
            rec,
            analysis,
        )
    structure = analysis.jacobian.describe()
    loop = sequential_plan(rec)
    solver = newton_plan(loop)
    if isinstance(solver, str):
        return LoweringPlan(
            SEQUENTIAL,
            _SEQUENTIAL,
            f"no linear structure proven ({structure} Jacobian); no Newton solver: {solver}",
            rec,
            analysis,
            sequential=loop,
            no_newton_plan=solver,
        )
    return LoweringPlan(
        NEWTON,
        "Newton-parallel solver (DEER/ParaRNN): each iteration evaluates the step and its "
        "Jacobian at all steps at once and solves the linearised recurrence by one scan; "
        "the sequential loop where Newton does not pay or does not converge",
        f"no linear structure proven ({structure} Jacobian); Newton: {solver.describe()}",
        rec,
        analysis,
        sequential=loop,
        newton=solver,
    )


_SEQUENTIAL = (
    "sequential loop over time; state-free work (input projections, gates of the inputs) "
    "computed for all steps at once"
)

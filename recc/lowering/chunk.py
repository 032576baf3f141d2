"""What a chunkwise backend needs to know of a matrix-state recurrence.

Stage: lowering. A `ChunkPlan` reads the diagonal-plus-low-rank form off the
analysis once, in the terms the chunkwise algorithm works in
(docs/lowering-chunkwise.md):

  S_t = S_{t-1} diag(d_t) + sum_m y_{t,m} e_{t,m}^T,   S[rows, cols]
  y_{t,m} = sum_r c_{t,r,m} x_{t,r} + a_{t,m},  x_{t,r} = S_{t-1} u_{t,r}
  o_t = S_t p_t + rest_t                                  (every output)

which is the form S_t = S_{t-1} (diag(d_t) + sum_r u_r w_r^T) + sum_j a_j b_j^T
with its rank-1 terms grouped by direction: every w_r and b_j is a scalar times
one of the directions e_m (`recc.analysis.dplr.direction_of`), so Gated
DeltaNet's two terms (the delta rule's and the injection's, both along k) are
one write per step. d_t is a scalar or over cols, u, e, p over cols, a over rows.

Every coefficient is an IR expression of the step's inputs, params and the
state-free lets (`state_free_lets`), computed for all steps at once. A spec
the algorithm cannot take gets no plan, and `chunk_plan` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from recc.analysis.dplr import direction_of, dplr_form, factor, linear_readout, outer_terms
from recc.analysis.forms import Analysis, DiagonalForm, DplrForm
from recc.analysis.normalise import normalise
from recc.analysis.orientation import transposed
from recc.analysis.rewrite import NotCanonical, make, state_dependent_lets
from recc.ir.nodes import Const, Definition, Expr, Recurrence

# Steps per chunk. The torch path measured fastest at 64 here (benchmarks/chunkwise.py);
# any length is exact.
CHUNK = 64


@dataclass(frozen=True)
class Write:
    """One rank-1 write of a step: outer(sum_r scale_r * x_r + inject, direction), with
    x_r = S_{t-1} @ reads[r]. `from_reads`: (r, scale) pairs (scale None: 1);
    `inject`: a vector over the rows, or None."""

    direction: Expr
    from_reads: tuple[tuple[int, Expr | None], ...]
    inject: Expr | None


@dataclass(frozen=True)
class Readout:
    """output `name` = S_t @ probe + rest (either absent: None)."""

    name: str
    probe: Expr | None
    rest: Expr | None


@dataclass(frozen=True, eq=False)
class ChunkPlan:
    spec: Recurrence
    analysis: Analysis
    state: str
    rows: str
    cols: str
    decay: Expr  # d_t, dims () or (cols,)
    reads: tuple[Expr, ...]  # u_r over cols: what the low-rank part reads, x_r = S_{t-1} u_r
    writes: tuple[Write, ...]
    readouts: tuple[Readout, ...]
    state_free_lets: tuple[Definition, ...]
    transposed: bool = False  # rows, cols are those of the spec's S^T (S stored [cols, rows])
    chunk: int = CHUNK

    @property
    def rank(self) -> int:
        """The rank of M_t's low-rank part (reads of the state per step)."""
        return len(self.reads)


def chunk_plan(rec: Recurrence, analysis: Analysis) -> ChunkPlan | str:
    """The chunkwise plan of a matrix-state recurrence, or why there is none.

    A DPLR class is read the way the classifier read it (S or S^T). A diagonal class
    with one matrix state (GLA, RetNet, Mamba2: decay along one dim, written as
    outer products, read out linearly) is DPLR of rank 0 in one orientation; the plan
    takes whichever the readouts allow, as written first."""
    form = analysis.form
    if isinstance(form, DplrForm):
        read = transposed(rec, form.state) if form.transposed else rec
        return _plan(rec, read, analysis, form)
    matrix = [s for s in rec.states if len(s.dims) == 2]
    if not isinstance(form, DiagonalForm) or not matrix:
        return (
            "the chunkwise algorithm takes matrix states of diagonal-plus-low-rank "
            f"or diagonal forms, not {analysis.kind} ones"
        )
    if len(rec.states) != 1:
        names = ", ".join(s.name for s in rec.states)
        return f"the chunkwise algorithm takes one state; this spec has {names}"
    state = matrix[0].name
    why = []
    for flip in (False, True):
        read = transposed(rec, state) if flip else normalise(rec)
        try:
            found = dplr_form(read, state)
        except NotCanonical as err:
            why.append(f"{'as ' + state + '^T' if flip else 'as written'}: {err}")
            continue
        plan = _plan(rec, read, analysis, replace(found, transposed=flip))
        if isinstance(plan, ChunkPlan):
            return plan
        why.append(f"{'as ' + state + '^T' if flip else 'as written'}: {plan}")
    return "; ".join(why)


def _plan(spec: Recurrence, rec: Recurrence, analysis: Analysis, form: DplrForm) -> ChunkPlan | str:
    """The plan of `spec`, read off `rec`: the spec written for the orientation `form`
    is of (the spec itself, or for S^T)."""
    s = rec.state(form.state)
    rows, cols = s.dims
    dependent = state_dependent_lets(rec, {form.state})
    free_lets = tuple(let for let in rec.lets if let.name not in dependent)
    lets = {let.name: let.expr for let in free_lets}
    try:
        inject = outer_terms(form.inject, rows, cols, lets)
    except NotCanonical as err:
        return f"the injection of {form.state} is not a sum of outer products ({err})"
    writes: dict[Expr, tuple[list, Expr | None]] = {}

    def write(direction: Expr):
        return writes.setdefault(direction, ([], None))

    for r, term in enumerate(form.terms):
        direction, scale = direction_of(factor(term.w, lets))
        write(direction)[0].append((r, scale))
    for a, b in inject:
        direction, scale = direction_of(b)
        reads, total = write(direction)
        a = a if scale is None else make("mul", a, scale)
        writes[direction] = (reads, a if total is None else make("add", total, a))
    readouts = []
    for out in rec.outputs:
        try:
            probe, rest = linear_readout(rec, form.state, out.expr)
            probe = None if probe is None else factor(probe, lets)
        except NotCanonical as err:
            return f"output {out.name} is not {form.state} @ p + (state-free): {err}"
        readouts.append(Readout(out.name, probe, rest))
    return ChunkPlan(
        spec=spec,
        analysis=analysis,
        state=form.state,
        rows=rows,
        cols=cols,
        decay=form.decay if form.decay is not None else Const((), 0.0),
        reads=tuple(factor(t.u, lets) for t in form.terms),
        writes=tuple(Write(e, tuple(r), a) for e, (r, a) in writes.items()),
        readouts=tuple(readouts),
        state_free_lets=free_lets,
        transposed=form.transposed,
    )

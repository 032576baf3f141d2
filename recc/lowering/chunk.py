"""What a chunkwise backend needs to know of a matrix-state recurrence.

Stage: lowering. A `ChunkPlan` reads the diagonal-plus-low-rank form off the
analysis once, in the terms the chunkwise algorithm works in
(docs/lowering-chunkwise.md):

  S_t = S_{t-1} diag(d_t) + sum_m y_{t,m} e_{t,m}^T,   S[rows, cols]
  y_{t,m} = sum_r c_{t,r,m} x_{t,r} + a_{t,m},  x_{t,r} = S_{t-1} u_{t,r}
  o_t = f(S_t p_{t,1}, ..., n_t . p_{t,j}, ...)            (every output)

with f state-free (most often `S_t p_t + rest_t`), and vector states n that move
as more rows of S (companions: mLSTM's normaliser beside C).

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
from recc.analysis.rewrite import NotCanonical, make, mentions, state_dependent_lets
from recc.ir.nodes import LET, Apply, Const, Definition, Expr, Recurrence, Ref

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
class Probe:
    """A linear readout of the new states: S_t @ probe (over the rows), or with
    `companion`, that vector state's n_t . probe (a scalar). `probe` is over cols."""

    name: str  # what the output's expression calls its value
    probe: Expr
    companion: str | None = None


@dataclass(frozen=True)
class Readout:
    """output `name` = expr, a state-free expression of the step's inputs, params and
    state-free lets and of the probes' values (Refs to their names): `S @ q` is one
    probe; mLSTM's `(C.T @ q) / max(abs(dot(n, q)), 1)` two, with a function of them.
    `expr` None: the output is 0."""

    name: str
    probes: tuple[Probe, ...]
    expr: Expr | None


@dataclass(frozen=True)
class Companion:
    """A vector state over cols that moves as one more row of S: the same decay, and
    writes along S's directions, n_t = n_{t-1} diag(d_t) + sum_m z_{t,m} e_{t,m}^T
    (mLSTM's normaliser n beside C). `scales[m]`: z_m, or None where write m does not
    reach it. Only with rank 0 (no reads of the state)."""

    state: str
    scales: tuple[Expr | None, ...]


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
    companions: tuple[Companion, ...] = ()  # vector states run as more rows of S

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
    if len(matrix) != 1:
        names = ", ".join(s.name for s in matrix)
        return f"the chunkwise algorithm takes one matrix state; this spec has {names}"
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
    others = [o for o in rec.states if o.name != form.state]
    if others and (form.terms or not isinstance(analysis.form, DiagonalForm)):
        names = ", ".join(o.name for o in rec.states)
        return f"the chunkwise algorithm takes one state beside rank-0 companions; this has {names}"
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
    companions = []
    for other in others:
        found = _companion(analysis.form, other.name, other.dims, cols, form, writes, lets)
        if isinstance(found, str):
            return found
        companions.append(found)
    readouts = []
    for out in rec.outputs:
        split = _Readouts(rec, form.state, {c.state for c in companions}, lets, out.name)
        try:
            expr = split.of(out.expr)
        except NotCanonical as err:
            return (
                f"output {out.name} is not a state-free function of linear readouts "
                f"({form.state} @ p, dot(n, p)): {err}"
            )
        readouts.append(Readout(out.name, tuple(split.probes), expr))
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
        companions=tuple(
            replace(c, scales=tuple(dict(c.scales).get(e) for e in writes)) for c in companions
        ),
    )


def _terms(expr: Expr) -> list[Expr]:
    """The additive terms of `expr` (through add, sub and neg)."""
    if isinstance(expr, Apply) and expr.op == "add":
        return _terms(expr.args[0]) + _terms(expr.args[1])
    if isinstance(expr, Apply) and expr.op == "sub":
        return _terms(expr.args[0]) + [make("neg", t) for t in _terms(expr.args[1])]
    if isinstance(expr, Apply) and expr.op == "neg":
        return [make("neg", t) for t in _terms(expr.args[0])]
    return [expr]


def _companion(diagonal, name, dims, cols, form, writes, lets):
    """State `name` as a companion of the matrix state (`Companion`; its scales here
    by direction, ordered by the plan), or why it is not one. New directions become
    writes with nothing for S's rows."""
    block = next((b for b in diagonal.blocks if b.states == (name,)), None)
    if dims != (cols,) or block is None:
        return (
            f"state {name} is not a vector over {cols} updated on its own, so it cannot "
            f"run as a row of {form.state}"
        )
    decay, inject = block.coupling[0][0], block.inject[0]
    if decay != form.decay:
        return f"state {name} decays by another factor than {form.state}"
    scales: dict[Expr, Expr] = {}
    for term in _terms(inject) if inject is not None else []:
        direction, scale = direction_of(factor(term, lets))
        scale = scale if scale is not None else Const((), 1.0)
        writes.setdefault(direction, ([], None))
        scales[direction] = (
            scale if direction not in scales else make("add", scales[direction], scale)
        )
    return Companion(name, tuple(scales.items()))


class _Readouts:
    """An output as a state-free expression of probes: each largest subexpression that
    is linear in the matrix state (`S @ p + rest`) or a companion's `dot(n, p)`
    becomes a Ref to a new probe; what remains must not read a state."""

    def __init__(self, rec, state: str, companions: set[str], lets, output: str) -> None:
        self.rec, self.state, self.companions, self.lets = rec, state, companions, lets
        self.output = output
        dependent = state_dependent_lets(rec, {state, *companions})
        self.stateful = {state, *companions, *dependent}
        self.probes: list[Probe] = []

    def _probe(self, probe: Expr, companion: str | None, dims) -> Expr:
        name = f"_{self.output}_probe{len(self.probes)}"
        self.probes.append(Probe(name, factor(probe, self.lets), companion))
        return Ref(dims, name, LET)

    def of(self, expr: Expr) -> Expr | None:
        if not mentions(expr, self.stateful):
            return expr
        if not mentions(expr, self.stateful - {self.state}):  # reads S alone
            try:
                probe, rest = linear_readout(self.rec, self.state, expr)
            except NotCanonical:
                probe = rest = None
                if not isinstance(expr, Apply):
                    raise
            else:
                if probe is None:
                    return rest
                value = self._probe(probe, None, expr.dims)
                return value if rest is None else make("add", value, rest)
        dot = self._dot(expr)
        if dot is not None:
            return dot
        if not isinstance(expr, Apply):
            raise NotCanonical(f"it reads '{getattr(expr, 'name', expr)}' other than linearly")
        args = [self.of(a) for a in expr.args]
        if any(a is None for a in args):  # an absent (zero) readout inside a function
            args = [Const(a0.dims, 0.0) if a is None else a for a, a0 in zip(args, expr.args)]
        return Apply(expr.dims, expr.op, tuple(args))

    def _dot(self, expr: Expr) -> Expr | None:
        """`dot(n, p)` or `dot(p, n)` of a companion n and a state-free p, as a probe."""
        if not (isinstance(expr, Apply) and expr.op == "dot"):
            return None
        a, b = expr.args
        for n, p in ((a, b), (b, a)):
            if isinstance(n, Ref) and n.name in self.companions:
                if mentions(p, self.stateful):
                    return None
                return self._probe(p, n.name, ())
        return None

"""The classifier: which of the four classes a recurrence is in, and its form.

Stage: analysis. Decisions come from sympy on the scalarised step
(`recc.analysis.symbolic`): whether every Jacobian entry is free of the state
(affine), the Jacobian's sparsity (diagonal / block / dense), the rank of the
low-rank part (numerically, from sympy's derivatives), and the expression
tree of a MinMax update. The canonical forms are then read off the IR
(`linear`, `dplr`, `minmax`) so backends get tensor expressions. When a
proof or a form fails, the classifier falls back to the more general class
and says why: a conservative class is only slower, a wrong one is wrong.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sympy

from recc.analysis.constants import check_constants
from recc.analysis.dplr import dplr_form
from recc.analysis.forms import (
    DIAGONAL,
    DPLR,
    MINMAX,
    NONLINEAR,
    Analysis,
    DiagonalBlock,
    DiagonalForm,
    DplrForm,
    JacobianStructure,
    MinMaxForm,
    NonlinearForm,
)
from recc.analysis.linear import affine_in_the_states, diagonal_coefficients, injections
from recc.analysis.minmax import max_min_coefficients, plus_coefficients
from recc.analysis.normalise import normalise
from recc.analysis.orientation import transposed
from recc.analysis.rewrite import NotCanonical, mentions, state_dependent_lets
from recc.analysis.symbolic import (
    Scalarised,
    numeric_function,
    random_values,
    scalarise,
    sparsity,
    uniform_sizes,
)
from recc.errors import RecError
from recc.frontend.parser import too_deep
from recc.ir.nodes import Apply, Recurrence, walk

SIZE = 3  # every dim is instantiated at this size for the structural analysis
MAX_BLOCK = 4  # larger channel-wise couplings are treated as dense
RANK_PROBE = 3  # off-diagonal block size used to measure a DPLR rank (rank < 3)


def analyze(rec: Recurrence) -> Analysis:
    try:
        return _analyze(rec)
    except RecursionError:  # past MAX_NESTING is refused up front; this is the backstop
        raise too_deep(rec.filename) from None


def _analyze(rec: Recurrence) -> Analysis:
    check_constants(rec)
    rewritten = normalise(rec)
    rewrites = rewritten is not rec
    rec = rewritten
    sc = scalarise(rec, uniform_sizes(rec, SIZE))
    entries = sparsity(sc)
    # Affine as the IR writes it: every canonical form is read off the IR, so a
    # cancellation only sympy sees (h / h, (h - h) * h) would not give a form.
    affine = affine_in_the_states(rec)
    structure = jacobian_structure(sc, entries, affine)
    transition = describe_transition(sc, affine)
    reasons: list[str] = []
    if rewrites:
        reasons.append(
            "read after exact rewrites of the IR (transposes pushed to the state, "
            "negation moved through max/min)"
        )

    def done(kind, form, **extra) -> Analysis:
        _check_finite_start(rec, kind, form)
        return Analysis(
            kind, form, structure, reasons=tuple(reasons), transition=transition, **extra
        )

    if affine:
        reasons.append("every update is affine in the state, operator by operator: affine")
        if structure.kind in ("diagonal", "block"):
            try:
                form = diagonal_form(rec, sc, entries)
                reasons.append(f"Jacobian is {structure.describe()}: a diagonal linear recurrence")
                return done(DIAGONAL, form)
            except NotCanonical as err:
                reasons.append(f"no diagonal form ({err}); staying general")
        else:
            read, rank = rec, dplr_rank(rec, reasons)
            if rank is None and _one_matrix_state(rec):
                read = transposed(rec, rec.states[0].name)
                rank = dplr_rank(read, reasons)
                if rank is not None:
                    reasons.append(
                        "its columns evolve independently: read as the recurrence of "
                        f"{rec.states[0].name}^T (a [K, V] state with left updates)"
                    )
            if rank is not None:
                try:
                    form = dplr_form(read, rec.states[0].name)
                    if read is not rec:
                        form = replace(form, transposed=True)
                    if form.rank != rank:
                        reasons.append(
                            f"the spec's low-rank terms number {form.rank}; "
                            f"the minimal rank is {rank}"
                        )
                    S = "S^T" if form.transposed else "S"
                    reasons.append(
                        f"{S}' = {S} @ (diag(d) - rank-{rank}) + B: diagonal-plus-low-rank"
                    )
                    return done(DPLR, form, rank=rank)
                except NotCanonical as err:
                    reasons.append(f"no DPLR form ({err}); staying general")
    elif structure.kind == "diagonal":
        semiring = minmax_semiring(sc, reasons)
        if semiring is not None:
            try:
                try:
                    form = minmax_form(rec, semiring)
                except NotCanonical:
                    if semiring != "max-plus":
                        raise
                    # sympy saw only + of the state: min(h + a, h + a) is h + a to it,
                    # and the IR's lattice (min here) decides
                    semiring = "min-plus"
                    form = minmax_form(rec, semiring)
                reasons.append(f"built from max/min/+ of the state: the {semiring} semiring")
                return done(MINMAX, form, semiring=semiring)
            except NotCanonical as err:
                reasons.append(f"no MinMax form ({err}); staying general")
    if not affine:
        reasons += not_rewritten(rec)
        reasons.append("some update is not affine in the state as written: nonlinear")
    reasons.append(f"Jacobian structure: {structure.describe()}")
    return done(NONLINEAR, NonlinearForm())


def _one_matrix_state(rec: Recurrence) -> bool:
    return len(rec.states) == 1 and len(rec.states[0].dims) == 2


def not_rewritten(rec: Recurrence) -> list[str]:
    """Why an identity of the reals that sympy applies is not used, where it occurs."""
    found = []
    names = {s.name for s in rec.states} | state_dependent_lets(rec, {s.name for s in rec.states})
    for d in (*rec.lets, *rec.updates):
        for node in walk(d.expr):
            if (
                isinstance(node, Apply)
                and node.op == "log"
                and isinstance(node.args[0], Apply)
                and node.args[0].op == "exp"
                and mentions(node, names)
            ):
                found.append(
                    "log(exp(s)) is not s in floating point (inf for s > 709.78, "
                    "subnormal and then -inf below s = -708): it stays as written"
                )
                return found
    return found


def linear_states(form) -> frozenset[str]:
    """States a linear form reads: from an infinite start such a state stays infinite
    or becomes NaN (0 * inf) at every step, so it must start finite."""
    if isinstance(form, DiagonalForm):
        return frozenset(
            source
            for block in form.blocks
            for row in block.coupling
            for source, coefficient in zip(block.states, row)
            if coefficient is not None
        )
    if isinstance(form, DplrForm):
        return frozenset((form.state,))
    return frozenset()


def _check_finite_start(rec: Recurrence, kind: str, form) -> None:
    read = linear_states(form)
    for s in rec.states:
        if s.name in read and s.init in (float("inf"), float("-inf")):
            raise RecError(
                f"state '{s.name}' starts at {'-' if s.init < 0 else ''}inf, but its "
                f"recurrence is {kind} (linear in the state)",
                s.span,
                "from an infinite start a linear state stays infinite or becomes NaN "
                "(0 * inf): start it at a finite value (infinite starts are for "
                "max/min recurrences)",
                rec.source,
                rec.filename,
            )


# ---- Jacobian structure ----------------------------------------------------


def jacobian_structure(sc: Scalarised, entries: set, affine: bool) -> JacobianStructure:
    """Connected components of the Jacobian's sparsity over state elements.

    A component holding two elements of one state couples along a dim: dense.
    Otherwise components pair elements of different states at one index:
    block-diagonal with the largest component's size (1 = diagonal).
    """
    elements = sc.state_elements()
    parent = list(range(len(elements)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in entries:
        parent[find(i)] = find(j)
    components: dict[int, list[int]] = {}
    for i in range(len(elements)):
        components.setdefault(find(i), []).append(i)
    size = 1
    for members in components.values():
        names = [elements[m][0] for m in members]
        indices = {elements[m][1] for m in members}
        if len(set(names)) != len(names) or len(indices) != 1:
            return JacobianStructure("dense", affine=affine)
        size = max(size, len(members))
    if size == 1:
        return JacobianStructure("diagonal", affine=affine)
    if size > MAX_BLOCK:
        return JacobianStructure("dense", affine=affine)
    return JacobianStructure("block", block_size=size, affine=affine)


# ---- diagonal ---------------------------------------------------------------


def diagonal_form(rec: Recurrence, sc: Scalarised, entries: set) -> DiagonalForm:
    """Blocks of states coupled channel by channel, with coefficients read off the IR.

    Which states an update reads is the IR's answer (`diagonal_coefficients`),
    not sympy's: sympy cancels h / h and h - h, which the IR keeps (and then
    either proves affine, or refuses)."""
    coefficients = diagonal_coefficients(rec)
    injected = injections(rec)
    elements = sc.state_elements()
    sympy_pairs = {(elements[i][0], elements[j][0]) for i, j in entries}
    if not sympy_pairs <= set(coefficients):  # pragma: no cover - sympy is the stricter one
        raise NotCanonical("sympy and the IR disagree on which states an update reads")
    coupled: dict[str, set[str]] = {s.name: {s.name} for s in rec.states}
    for a, b in coefficients:
        merged = coupled[a] | coupled[b]
        for name in merged:
            coupled[name] = merged
    blocks = []
    seen: set[str] = set()
    for s in rec.states:
        if s.name in seen:
            continue
        group = tuple(x.name for x in rec.states if x.name in coupled[s.name])
        seen.update(group)
        if len({rec.state(n).dims for n in group}) != 1:
            raise NotCanonical("coupled states have different shapes")
        if len(group) > MAX_BLOCK:
            raise NotCanonical(f"{len(group)} states are coupled (at most {MAX_BLOCK} per block)")
        coupling = tuple(
            tuple(coefficients.get((target, source)) for source in group) for target in group
        )
        inject = tuple(injected[target] for target in group)
        blocks.append(DiagonalBlock(group, coupling, inject))
    return DiagonalForm(tuple(blocks))


# ---- DPLR -------------------------------------------------------------------


def dplr_rank(rec: Recurrence, reasons: list[str]) -> int | None:
    """The rank of the low-rank part of S' = S @ M + B, from sympy's Jacobian.

    Needs one matrix state S[R, C] whose rows evolve independently by one
    shared right factor M. M = diag(d) + L; an off-diagonal block of M equals
    the same block of L, so its numerical rank (at random inputs, columns
    instantiated at 2 * RANK_PROBE) is rank(L) whenever rank(L) < RANK_PROBE.
    """
    if len(rec.states) != 1 or len(rec.states[0].dims) != 2:
        reasons.append("dense coupling, and not a single matrix state: not DPLR")
        return None
    state = rec.states[0]
    rows, cols = state.dims
    sizes = {d: 2 for d in rec.dims}
    sizes[cols] = 2 * RANK_PROBE
    sc = scalarise(rec, sizes)
    S, F = sc.old[state.name], sc.new[state.name]
    n_rows, n_cols = S.shape
    for i in range(n_rows):
        row = set(S[i, :])
        for j in range(n_cols):
            if F[i, j].free_symbols & sc.state_symbol_set() - row:
                reasons.append("rows of S are mixed (a left factor): not DPLR in S @ M form")
                return None
    # M_i[k, j] = d F[i, j] / d S[i, k], for the first two rows, as one numpy function
    rows = range(min(n_rows, 2))
    entries = [
        sympy.diff(F[i, j], S[i, k]) for i in rows for k in range(n_cols) for j in range(n_cols)
    ]
    symbols = sorted({s for e in entries for s in e.free_symbols}, key=str)
    evaluate = numeric_function(entries, symbols)
    rng = np.random.default_rng(0)
    rank = 0
    for _ in range(2):
        values = random_values(sc, rng)
        with np.errstate(all="ignore"):
            flat = np.array(evaluate(*[values[s] for s in symbols]), dtype=float)
        if not np.isfinite(flat).all():
            reasons.append("the right factor is not finite at random inputs: not DPLR")
            return None
        factors = flat.reshape(len(rows), n_cols, n_cols)
        if any(not np.allclose(m, factors[0], rtol=1e-9, atol=1e-12) for m in factors[1:]):
            reasons.append("rows of S see different right factors: not DPLR")
            return None
        block = factors[0][:RANK_PROBE, RANK_PROBE:]
        rank = max(rank, int(np.linalg.matrix_rank(block, tol=1e-9 * max(1.0, abs(block).max()))))
    if rank >= RANK_PROBE:
        reasons.append(f"the right factor's off-diagonal part has rank >= {RANK_PROBE}: dense")
        return None
    if rank == 0:
        reasons.append("the right factor has no low-rank part yet couples columns")
        return None
    return rank


# ---- MinMax -----------------------------------------------------------------


def minmax_semiring(sc: Scalarised, reasons: list[str]) -> str | None:
    uses = set()

    def ok(expr: sympy.Expr, s: sympy.Symbol) -> bool:
        if s not in expr.free_symbols:
            return True
        if expr == s:
            return True
        if isinstance(expr, (sympy.Max, sympy.Min)):
            uses.add("min" if isinstance(expr, sympy.Min) else "max")
            return all(ok(arg, s) for arg in expr.args)
        if isinstance(expr, sympy.Add):
            with_s = [arg for arg in expr.args if s in arg.free_symbols]
            uses.add("add")
            return len(with_s) == 1 and ok(with_s[0], s)
        return False

    for name, arr in sc.new.items():
        for index in np.ndindex(arr.shape):
            if not ok(arr[index], sc.old[name][index]):
                reasons.append("the state passes through an operation other than max, min, +")
                return None
    if "add" not in uses:
        return "max-min"
    if "min" in uses and "max" in uses:
        reasons.append("mixes max, min and + of the state: none of max-min, max-plus, min-plus")
        return None
    return "min-plus" if "min" in uses else "max-plus"


def minmax_form(rec: Recurrence, semiring: str) -> MinMaxForm:
    if semiring == "max-min":
        coefficients = {s.name: max_min_coefficients(rec, s.name) for s in rec.states}
    else:
        lattice = "min" if semiring == "min-plus" else "max"
        coefficients = {s.name: plus_coefficients(rec, s.name, lattice) for s in rec.states}
    return MinMaxForm(semiring, coefficients)


# ---- the simplified transition, for `recc explain` ----------------------------


MAX_DESCRIBED = 8  # states whose transition `recc explain` prints


def describe_transition(sc: Scalarised, affine: bool, limit: int = 400) -> tuple[str, ...]:
    """The first element of the first states' updates, simplified, with common
    subexpressions pulled out by sympy.cse (at most MAX_DESCRIBED states: the
    simplification is the costliest step of a large spec's analysis)."""
    names, exprs = [], []
    shown = list(sc.new.items())[:MAX_DESCRIBED]
    for name, arr in shown:
        first = tuple(0 for _ in arr.shape)
        f = arr[first]
        own = sorted(f.free_symbols & sc.state_symbol_set(), key=str)
        if affine and own:
            f = sympy.collect(sympy.expand(f), own)
        names.append(str(sc.old[name][first]))
        exprs.append(f)
    shared, reduced = sympy.cse(exprs)
    lines = [f"{sym} = {_short(expr, limit)}" for sym, expr in shared]
    lines += [f"{n}' = {_short(e, limit)}" for n, e in zip(names, reduced)]
    if len(sc.new) > len(shown):
        lines.append(f"... and {len(sc.new) - len(shown)} more states")
    return tuple(lines)


def _short(expr: sympy.Expr, limit: int) -> str:
    text = sympy.sstr(expr)
    return text if len(text) <= limit else text[: limit - 3] + "..."

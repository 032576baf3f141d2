"""What a scan backend needs to know of a spec, read off the analysis once.

Stage: lowering. A `ScanPlan` carries every fact the torch scan and the Triton
generator used to re-derive from the spec themselves (issue 7, item 5):

  groups         the state groups the scan composes, each with its step-map
                 algebra (`recc.lowering.algebra`) and the spec's expression of
                 every slot it has (a slot it lacks is absent, never a value)
  state-free / state-reading lets
                 lets computed for all steps at once, and lets of the old state
                 that belong to the step
  time-varying   the names that change from step to step (inputs, states and
                 the lets reading them; params and lets of params do not)
  readouts       every output as a backend computes it: the lets of the old
                 state it reads written out, that state one step back as
                 `old_state(...)` (h_{t-1}); `old_read`, the states so read
  unread         states nothing reads: only their final leaves the spec, from
                 their update at the last step (`recc.interpreter.last_step`;
                 see recc.analysis.liveness); `update_reads`, the states each
                 update reads, says whether that needs h_{T-2}
  kernel         the plan of the spec without its unread states, which a backend
                 that scans every step's update computes (None if no state is left)
  contracted     dims some reduction sums over (a backend must not split them)
  finite_states  states a linear form reads, which must start finite

Backends read these and import no analysis module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from recc.analysis.classify import analyze, linear_states
from recc.analysis.forms import Analysis, DiagonalForm, MinMaxForm
from recc.analysis.liveness import states_read, unread_states, without_states
from recc.analysis.rewrite import mentions, readouts_at_old_states, state_dependent_lets
from recc.ir.nodes import STATE, Apply, Definition, Expr, Recurrence, Ref, walk
from recc.lowering.algebra import Algebra, affine, minmax

# A readout's reference to a state one step back (h_{t-1}, through a let of the old
# state): a name no spec can spell.
_OLD = "old state "


def old_name(state: str) -> str:
    return _OLD + state


def old_state(s) -> Ref:
    return Ref(s.dims, old_name(s.name), STATE)


@dataclass(frozen=True)
class ScanGroup:
    """States the scan composes together, one map per step.

    `slots`: the algebra's slots the spec has, each with its expression (over
    inputs, params and lets; broadcast to the states' dims by name). A slot not
    here is absent: the structural element it stands for (`Algebra.absent`)."""

    states: tuple[str, ...]
    algebra: Algebra
    slots: Mapping[str, Expr]


@dataclass(frozen=True, eq=False)
class ScanPlan:
    spec: Recurrence
    analysis: Analysis
    groups: tuple[ScanGroup, ...]
    state_free_lets: tuple[Definition, ...]
    state_reading_lets: tuple[Definition, ...]
    time_varying: frozenset[str]
    readouts: tuple[Expr, ...]
    old_read: tuple[str, ...]
    unread: tuple[str, ...]
    update_reads: Mapping[str, tuple[str, ...]]
    contracted: frozenset[str]
    finite_states: frozenset[str]
    kernel: ScanPlan | None = field(default=None, repr=False)

    @property
    def form(self):
        return self.analysis.form

    @property
    def reading_names(self) -> frozenset[str]:
        return frozenset(let.name for let in self.state_reading_lets)


def groups_of(rec: Recurrence, analysis: Analysis) -> tuple[ScanGroup, ...]:
    form = analysis.form
    if isinstance(form, DiagonalForm):
        groups = []
        for block in form.blocks:
            slots = {
                f"a_{i}{j}": c
                for i, row in enumerate(block.coupling)
                for j, c in enumerate(row)
                if c is not None
            }
            slots.update({f"b_{i}": c for i, c in enumerate(block.inject) if c is not None})
            groups.append(ScanGroup(block.states, affine(block.size), MappingProxyType(slots)))
        return tuple(groups)
    assert isinstance(form, MinMaxForm), form
    algebra = minmax(form.semiring)
    groups = []
    for s in rec.states:
        a, b = form.coefficients[s.name]
        slots = {k: e for k, e in (("a", a), ("b", b)) if e is not None}
        groups.append(ScanGroup((s.name,), algebra, MappingProxyType(slots)))
    return tuple(groups)


def _time_varying(rec: Recurrence) -> frozenset[str]:
    varying = {i.name for i in rec.inputs} | {s.name for s in rec.states}
    varying |= {old_name(s.name) for s in rec.states}
    for let in rec.lets:
        if any(isinstance(n, Ref) and n.name in varying for n in walk(let.expr)):
            varying.add(let.name)
    return frozenset(varying)


def contracted_dims(exprs) -> frozenset[str]:
    """Dims some reduction sums over: they cannot be split across programs."""
    found: set[str] = set()
    for expr in exprs:
        for node in walk(expr):
            if isinstance(node, Apply):
                if node.op == "matmul":
                    found.add(node.args[0].dims[-1])
                elif node.op in ("dot", "sum"):
                    found.update(node.args[0].dims)
    return frozenset(found)


def scan_plan(rec: Recurrence, analysis: Analysis, kernel: bool = True) -> ScanPlan:
    """The facts of a diagonal or MinMax spec's scan (`kernel`: also of the spec
    without its unread states)."""
    assert isinstance(analysis.form, (DiagonalForm, MinMaxForm)), analysis.kind
    names = {s.name for s in rec.states}
    dependent = state_dependent_lets(rec, names)
    readouts = tuple(readouts_at_old_states(rec, old_state))
    old_read = tuple(
        s.name for s in rec.states if any(mentions(o, {old_name(s.name)}) for o in readouts)
    )
    unread = unread_states(rec)
    coefficients = [c for g in groups_of(rec, analysis) for c in g.slots.values()]
    facts = ScanPlan(
        spec=rec,
        analysis=analysis,
        groups=groups_of(rec, analysis),
        state_free_lets=tuple(let for let in rec.lets if let.name not in dependent),
        state_reading_lets=tuple(let for let in rec.lets if let.name in dependent),
        time_varying=_time_varying(rec),
        readouts=readouts,
        old_read=old_read,
        unread=unread,
        update_reads=MappingProxyType(
            {u.name: tuple(sorted(states_read(rec, u.expr))) for u in rec.updates}
        ),
        contracted=contracted_dims(
            [u.expr for u in rec.updates]
            + [let.expr for let in rec.lets]
            + coefficients
            + list(readouts)
        ),
        finite_states=frozenset(linear_states(analysis.form)),
    )
    if not kernel:
        return facts
    if not unread:
        return replace(facts, kernel=facts)
    if len(unread) == len(rec.states) or any(facts.update_reads[n] for n in unread):
        return facts  # no spec without them computes the same finals from the last step
    live = without_states(rec, set(unread))
    live_analysis = analyze(live)
    assert live_analysis.kind == analysis.kind, "removing unread states keeps the class"
    return replace(facts, kernel=scan_plan(live, live_analysis, kernel=False))

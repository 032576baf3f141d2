"""The Newton-parallel form of a nonlinear recurrence (DEER, ParaRNN), as IR.

Stage: lowering. The sequence h_1..h_T of `h_t = f(h_{t-1}, x_t)` is the root
of the system `h_t - f(h_{t-1}, x_t) = 0` for all t at once. Newton's method
on it, from a guess h^k: evaluate `f_t = f(h^k_{t-1}, x_t)` and the Jacobian
`J_t = df/dh (h^k_{t-1}, x_t)` at every t in parallel, then solve

    h^{k+1}_t = J_t h^{k+1}_{t-1} + (f_t - J_t h^k_{t-1}),   h^{k+1}_0 = h_0,

a linear recurrence in h^{k+1}: a scan. Each iteration makes one more step
exact (step t depends on steps before it only), so T iterations solve any
system; a contracting one converges quadratically in a few.

This module writes both halves as IR, once, for every backend:

  step        the spec's step with its state-free work hoisted
              (`recc.lowering.sequential`): f, evaluated at all t per iteration
  blocks      d(update of each state)/d(each state) as elementwise multipliers
              (`recc.ir.autodiff.state_jacobian`): generated from the IR,
              never autograd at run time. Where every block is elementwise
              (ParaGRU, IndRNN; ParaLSTM's [c, h] as 2 x 2 blocks per channel)
              they are the whole Jacobian: Newton proper (`exact`). Where a
              block is dense (GRU, LSTM, Elman: `W_hh @ h`), its diagonal
              stands in for it, read off the block's Jacobian-vector product
              (`W @ t` contributes diag(W) * t): quasi-Newton, as quasi-DEER
              does. The iteration then converges linearly instead of
              quadratically, to the same root: the stop rule measures the
              true step f, whatever the linear model.
  linear      the linearised step as a spec of its own,
                `s_i = sum_j J_ij * s_j + c_i`   (inputs J_ij, c_i),
              which analysis classifies diagonal (one state) or a per-channel
              block (several coupled states), so the scan lowering every
              backend has runs it.
  adjoint     the same with J transposed, run on reversed time: the backward's
              `lambda_t = g_t + J_{t+1}^T lambda_{t+1}`. Exact blocks solve it
              in one scan. With a quasi Jacobian the adjoint still needs the
              true J^T: `transposed` is the vector-Jacobian product of the step
              with respect to its states (`recc.ir.autodiff.vjp`, matrix-free),
              and the backend iterates the diagonal scan on the remainder
              (J^T - D) lambda until it stops moving.

A Jacobian whose diagonal cannot be read off (a state in an `outer`, a `dot`
or a `sum`; a state coupled to one of other dims) gets no Newton plan, with
the reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis import analyze
from recc.analysis.liveness import unread_states
from recc.ir import load
from recc.ir.autodiff import COTANGENT, Structure, state_jacobian, vjp
from recc.ir.nodes import Apply, Const, Dims, Expr, Recurrence, Ref, name_maker, walk
from recc.lowering.scan import ScanPlan, scan_plan
from recc.lowering.sequential import SequentialPlan


@dataclass(frozen=True)
class Block:
    """d new `target` / d old `source` (or its diagonal): an elementwise multiplier."""

    target: str
    source: str
    multiplier: Expr  # over the step's names, lets and `diagonals`; nests in the target's dims
    coefficient: str  # its input's name in the linear spec
    exact: bool  # False: the diagonal of a dense block


@dataclass(frozen=True, eq=False)
class NewtonPlan:
    sequential: SequentialPlan  # the hoisting; `step` is what each iteration evaluates
    blocks: tuple[Block, ...]  # every nonzero block of the state Jacobian
    # a name the multipliers read -> the square matrix (a param or hoisted value of the
    # step) whose diagonal it is
    diagonals: dict[str, str]
    offsets: dict[str, str]  # state -> the linear spec's input c_i
    linear: Recurrence  # s_i = sum_j J_ij * s_j + c_i
    scan: ScanPlan  # the linear spec's scan
    adjoint: Recurrence  # l_j = sum_i J_ij * l_i + c_j: the transpose, for the backward
    adjoint_scan: ScanPlan
    # quasi-Newton only: J^T lambda per source state, matrix-free, lambda_i the ref
    # named `cotangents[i]`
    transposed: dict[str, Expr]
    cotangents: dict[str, str]
    # states nothing reads: only their final leaves, from their update at the last step
    # (differentiated there alone, as the loop does: recc.analysis.liveness)
    unread: tuple[str, ...] = ()

    @property
    def step(self) -> Recurrence:
        return self.sequential.step

    @property
    def exact(self) -> bool:
        """Whether the blocks are the whole Jacobian (Newton) or a diagonal (quasi)."""
        return all(b.exact for b in self.blocks)

    @property
    def coupled(self) -> int:
        """The largest number of states one state's update reads (1: diagonal)."""
        counts: dict[str, int] = {}
        for b in self.blocks:
            counts[b.target] = counts.get(b.target, 0) + 1
        return max(counts.values(), default=1)

    def describe(self) -> str:
        k = self.coupled
        shape = "diagonal" if k == 1 else f"{k} x {k} blocks per channel"
        if self.exact:
            return f"exact Jacobian, {shape}; each iteration one scan"
        dense = ", ".join(f"d {b.target}/d {b.source}" for b in self.blocks if not b.exact)
        return (
            f"quasi-Newton: the dense blocks ({dense}) by their diagonals, {shape}; "
            "each iteration one scan, linear convergence"
        )


class _NoDiagonal(Exception):
    """The block's diagonal cannot be read off its Jacobian-vector product."""


def newton_plan(seq: SequentialPlan) -> NewtonPlan | str:
    """The Newton form of `seq`'s step, or why it has none."""
    step = seq.step
    states = {s.name: s.dims for s in step.states}
    lets = {d.name: d.expr for d in step.lets}
    updates = [(u.name, u.expr) for u in step.updates]
    fresh = name_maker(step)
    diagonals: dict[str, str] = {}
    blocks = []
    for b in state_jacobian(updates, states, lets):
        coefficient = fresh(f"J_{b.target}_{b.source}")
        if b.structure is Structure.DIAGONAL:
            blocks.append(Block(b.target, b.source, b.value, coefficient, True))
            continue
        if states[b.target] != states[b.source]:
            return (
                f"d {b.target}/d {b.source} maps a state of dims {list(states[b.source])} to one "
                f"of dims {list(states[b.target])}: it has no diagonal to stand in for it"
            )
        assert b.tangent is not None
        try:
            diagonal = _Diagonal(b.tangent, diagonals, fresh).of(b.value)
        except _NoDiagonal as e:
            return f"d {b.target}/d {b.source} has no diagonal to read off: {e}"
        if diagonal is not None:
            blocks.append(Block(b.target, b.source, diagonal, coefficient, False))
    blocks_t = tuple(blocks)
    offsets = {s: fresh(f"c_{s}") for s in states}
    transposed_blocks = tuple(
        Block(b.source, b.target, b.multiplier, b.coefficient, b.exact) for b in blocks_t
    )
    scans: list = []
    for name, which in (("newton_step_of", blocks_t), ("newton_adjoint_of", transposed_blocks)):
        linear = _linear_spec(f"{name}_{step.name}", step, which, offsets)
        analysis = analyze(linear)
        if analysis.kind != "diagonal":  # pragma: no cover - elementwise blocks always are
            return f"its linearised step classifies {analysis.kind}, not diagonal"
        scans += [linear, scan_plan(linear, analysis)]
    transposed: dict[str, Expr] = {}
    cotangents: dict[str, str] = {}
    if not all(b.exact for b in blocks_t):
        cotangents = {s: fresh(f"lambda_{s}") for s in states}
        seeds = [(expr, Ref(states[n], cotangents[n], COTANGENT)) for n, expr in updates]
        found = vjp(seeds, lets, wrt=states.__contains__)
        transposed = {s: e for s in states if (e := found.of(s)) is not None}
    unread = unread_states(step)
    return NewtonPlan(seq, blocks_t, diagonals, offsets, *scans, transposed, cotangents, unread)


class _Diagonal:
    """The diagonal of a linear map given as its Jacobian-vector product in the
    tangent `tangent`: d(e)_i = de_i/dt_i. The product is linear in the tangent,
    so the tangent appears in sums, products and quotients by tangent-free
    values, selections, and matrix-vector products `M @ e` with a tangent-free
    square M, whose diagonal is diag(M) * d(e) where e is elementwise in the
    tangent (GRU's `W_hz @ t`), and approximately so otherwise (quasi-Newton
    needs only an approximation; the iteration measures the true step)."""

    def __init__(self, tangent: str, diagonals: dict[str, str], fresh) -> None:
        self.tangent, self.diagonals, self.fresh = tangent, diagonals, fresh

    def reads(self, expr: Expr) -> bool:
        return any(isinstance(n, Ref) and n.name == self.tangent for n in walk(expr))

    def of(self, expr: Expr) -> Expr | None:
        """The diagonal as IR, or None where it is zero."""
        if not self.reads(expr):
            return None
        if isinstance(expr, Ref):
            return Const((), 1.0)
        assert isinstance(expr, Apply)
        op, args = expr.op, expr.args
        if op in ("add", "sub"):
            a, b = self.of(args[0]), self.of(args[1])
            if b is None:
                return a
            if a is None:
                return b if op == "add" else _apply("neg", b)
            return _apply(op, a, b)
        if op == "neg":
            inner = self.of(args[0])
            return None if inner is None else _apply("neg", inner)
        if op == "mul":
            linear, other = (args[0], args[1]) if self.reads(args[0]) else (args[1], args[0])
            if self.reads(other):
                raise _NoDiagonal("the tangent multiplies itself")  # pragma: no cover
            inner = self.of(linear)
            return None if inner is None else _apply("mul", other, inner)
        if op == "div" and not self.reads(args[1]):
            inner = self.of(args[0])
            return None if inner is None else _apply("div", inner, args[1])
        if op == "select" and not self.reads(args[0]):
            a, b = self.of(args[1]), self.of(args[2])
            zero = Const((), 0.0)
            if a is None and b is None:
                return None
            return Apply(expr.dims, "select", (args[0], a or zero, b or zero))
        if op == "matmul" and not self.reads(args[0]) and len(args[1].dims) == 1:
            inner = self.of(args[1])
            diagonal = self.matrix_diagonal(args[0])
            return None if inner is None else _apply("mul", diagonal, inner)
        raise _NoDiagonal(f"the state passes '{op}'")

    def matrix_diagonal(self, matrix: Expr) -> Ref:
        if isinstance(matrix, Apply) and matrix.op == "transpose":
            matrix = matrix.args[0]  # the same diagonal
        if not isinstance(matrix, Ref):  # the hoisting names every state-free matrix
            raise _NoDiagonal("a matrix that is not a name")  # pragma: no cover
        rows, cols = matrix.dims[-2], matrix.dims[-1]
        if rows != cols:
            raise _NoDiagonal(f"'{matrix.name}' is [{rows}, {cols}], not square")
        for name, of in self.diagonals.items():
            if of == matrix.name:
                return Ref((rows,), name, "param")
        name = self.fresh(f"diag_{matrix.name.replace(' ', '_')}")
        self.diagonals[name] = matrix.name
        return Ref((rows,), name, "param")


def _apply(op: str, *args: Expr) -> Apply:
    dims: Dims = max((a.dims for a in args), key=len)
    return Apply(dims, op, args)


def _linear_spec(name: str, step: Recurrence, blocks: tuple[Block, ...], offsets: dict[str, str]):
    """`s_i = sum_j J_ij * s_j + c_i` over the step's states, as a spec."""
    dims = sorted({d for s in step.states for d in s.dims})

    def shape(d: tuple[str, ...]) -> str:
        return f"[{', '.join(d)}]" if d else ""

    dims_of = {s.name: s.dims for s in step.states}
    lines = [f"recurrence {name} {{"]
    if dims:
        lines.append(f"  dims {', '.join(dims)}")
    names = [f"{b.coefficient}{shape(dims_of[b.target])}" for b in blocks]
    names += [f"{offsets[s]}{shape(dims_of[s])}" for s in offsets]
    lines.append(f"  input {', '.join(names)}")
    for s in step.states:
        lines.append(f"  state {s.name}{shape(s.dims)} = 0")
    for s in step.states:
        terms = [f"{b.coefficient} * {b.source}" for b in blocks if b.target == s.name]
        lines.append(f"  update {s.name} = {' + '.join([*terms, offsets[s.name]])}")
    for s in step.states:
        lines.append(f"  output {s.name}")
    lines.append("}")
    return load("\n".join(lines))


__all__ = ["Block", "NewtonPlan", "newton_plan"]

"""Generate the Triton kernels (forward and backward) of a diagonal or MinMax recurrence.

Stage: backend (triton). Input: the spec's IR and its canonical form (from
`recc.analysis`); output: the source text of a Python module holding the
`@triton.jit` kernels. Nothing here re-analyses the spec.

Forward kernel (one program per batch x head and block of channels):

    load the initial state (a tile without a time axis)
    for each block of BLOCK_T steps:
        [store the state entering the block: the backward's checkpoint]
        load this block's inputs once                       (global -> registers)
        compute the lets, a_t and b_t from them             (never stored)
        (A, B) = tl.associative_scan over time with the class's combine
        states = A (x) carried state + B                    (every step of the block)
        outputs = readouts of the states, stored            (registers -> global)
        carried state = the state at the block's last real step
    store the final state if asked

so its global traffic is the inputs once, the outputs once and the final state.

Backward kernel (same grid), blocks in reverse, from the checkpoints:

    recompute a_t, b_t and, by the forward's scan, h_t for the block; h_{t-1}
        by a scan that shifts h by one step (selection only: exact)
    output cotangents -> d h_t (the IR's vjp of the readouts, printed in the tile)
    reverse scan over pairs: (g_t, u_t), g_t = dL/dh_t, u_t = J_t^T g_t
        (each step's map (g', u') -> (dh_t + u', J_t^T (dh_t + u')) only uses
        the current step's J_t: no shifted loads)
    diagonal: da_t = g_t (x) h_{t-1}, db_t = g_t; the vjp through the gates.
    MinMax: J_t and the operands' cotangents come from the spec's own update,
        differentiated at h_{t-1} (the canonical form has ties the spec does
        not have, and a MinMax gradient is a routing through ties)
    every derivative is recc.ir.autodiff's, as IR printed like the forward;
    inputs' gradients stored per step; params' summed in registers;
    the initial state's gradient is u at t = 0.

Structure the spec has, the kernels keep: a coefficient that is absent (the
update does not read that state) takes no slot in the scan, so 0 * inf and
0 * NaN never arise from it; a state whose update reads no state is not
scanned at all. Composed maps of a block with partly absent coupling hold the
entries their products can reach, as zeros where a product is structurally
zero (a non-finite state times such a zero is NaN: see docs/scan-lowering.md).

Every identifier comes from one `Namespace` (`names.py`), so spec names never
collide with the generator's. Tensors without the channel-split dim get
per-channel-block partial gradients that the launcher sums (no atomics).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recc.backends.names import Namespace, cite, docstring_text
from recc.backends.triton.tile import (
    HELPERS,
    TIME,
    TileEmitter,
    TileLayout,
    inline,
    literal,
    unsupported_reason,
)
from recc.backends.triton.wrap import ungrouped, wrap_source
from recc.ir.autodiff import COTANGENT, Cotangents, vjp
from recc.ir.nodes import Expr, Recurrence, Ref, substitute, walk
from recc.lowering import (
    Analysis,
    DiagonalBlock,
    DiagonalForm,
    MinMaxForm,
    ScanPlan,
    old_name,
    old_state,
)
from recc.lowering.algebra import Algebra, affine, minmax, operand, pair, routing, shift

INF = float("inf")
# Names every generated module defines at top level.
MODULE_NAMES = ("triton", "tl", "_expm1", "_log1p", "_tanh", "_log_sigmoid", "_softplus")


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument: its pointer parameter and one stride parameter per axis.

    `key` is the launcher's (role, spec name): ("input", "k"), ("init", "h"),
    ("out", "y"), ... Axes: "c" channel block (partial gradients), "b" batch,
    "t" time, "h" heads (stride 0 when there are none), "k" checkpoint index;
    then the tensor's dims.
    """

    key: tuple[str, str]
    axes: tuple[str, ...]
    dims: tuple[str, ...]
    pointer: str
    strides: tuple[str, ...]


@dataclass(frozen=True)
class ScanKernelPlan:
    """What the launcher needs to know about the generated kernels."""

    forward: str  # the @triton.jit functions' names
    backward: str
    layout: TileLayout  # with the kernels' identifiers for offsets, masks, blocks
    blocked: str | None  # the dim split across programs (never contracted)
    inputs: tuple[tuple[str, tuple[str, ...]], ...]
    params: tuple[tuple[str, tuple[str, ...]], ...]
    states: tuple[tuple[str, tuple[str, ...]], ...]
    outputs: tuple[tuple[str, tuple[str, ...]], ...]
    # each output's expression as the kernels compute it: the lets of the old state it
    # reads written out, that state read as `old_state(...)` (h_{t-1})
    readouts: tuple[Expr, ...]
    old_read: tuple[str, ...]  # the states some readout reads one step back
    forward_args: tuple[TensorArg, ...]
    backward_args: tuple[TensorArg, ...]
    sizes: tuple[str, ...]  # the size parameter of each layout dim, in order
    # module-level function names: "shift", and per group g {"combine", "combine_adjoint"}
    functions: dict = field(compare=False, hash=False)
    # the kernels' parameter scope; each kernel's locals live in a child of it
    names: Namespace = field(compare=False, hash=False, repr=False)
    # the tile budgets are divided by this: the scanned maps' slots per element over 6
    # (a 2 x 2 block's a and b), so k x k blocks for k > 2 keep the registers of a tile
    # within what compiles without spills (tests/test_triton_newton.py: sLSTM's 4 x 4)
    tile_scale: int = 1

    def partial(self, dims: tuple[str, ...]) -> bool:
        """Gradients of a tensor without the split dim are summed over channel blocks."""
        return self.blocked is not None and self.blocked not in dims

    def block_name(self, axis: str) -> str:
        """The constexpr block size of a layout dim, or of time (`TIME`)."""
        return self.layout.block(axis)


class Unsupported(Exception):
    """This spec has no Triton scan kernel (yet); the reason says why."""


# Scalar parameters and locals every kernel has, claimed first so they keep
# these spellings (a spec name like `T` or `i_b` then gets `T_2`, `i_b_2`).
_KERNEL_NAMES = (
    "T",
    "H",
    "DTYPE",
    "STORE_FINAL",
    "STORE_CKPT",
    "i_bh",
    "i_b",
    "i_h",
    "i_c",
    "i_k",
    "t0",
    "t_end",
    "i_rev",
    "n_blocks",
    "is_first",
    "is_last",
    "is_final",
)


def _layout(rec: Recurrence, exprs: list[Expr]) -> TileLayout:
    order: list[str] = []
    for s in sorted(rec.states, key=lambda s: -len(s.dims)):
        order += [d for d in s.dims if d not in order]
    for expr in exprs:
        for node in walk(expr):
            order += [d for d in node.dims if d not in order]
    return TileLayout(tuple(order))


def _coefficients(analysis: Analysis) -> list[Expr | None]:
    form = analysis.form
    if isinstance(form, DiagonalForm):
        return [c for b in form.blocks for row in b.coupling for c in row] + [
            c for b in form.blocks for c in b.inject
        ]
    assert isinstance(form, MinMaxForm)
    return [c for pair in form.coefficients.values() for c in pair]


def _tensor_arg(ns: Namespace, key: tuple[str, str], axes, dims, pointer: str) -> TensorArg:
    base = pointer.removesuffix("_ptr")
    strides = tuple(
        ns.name(("stride", key, i), f"s_{base}_{a}") for i, a in enumerate((*axes, *dims))
    )
    return TensorArg(key, tuple(axes), tuple(dims), ns.name(("pointer", key), pointer), strides)


def plan_scan_kernel(facts: ScanPlan) -> ScanKernelPlan:
    rec, analysis = facts.spec, facts.analysis
    free_lets = [let.expr for let in facts.state_free_lets]
    # an output reading a let of the old state reads h_{t-1}: the kernels keep it
    outputs = list(facts.readouts)
    old_read = facts.old_read
    for name in old_read:
        if not facts.update_reads[name]:
            raise Unsupported(
                f"an output reads state '{name}' one step back (through a let), and its "
                "update reads no state, so the kernels have no adjoint scan to carry that "
                "gradient in; the torch backend computes it"
            )
    coefficients = [e for e in _coefficients(analysis) if e is not None]
    updates = [u.expr for u in rec.updates] + [let.expr for let in facts.state_reading_lets]
    exprs = free_lets + coefficients + outputs
    layout = _layout(rec, exprs + updates)
    reason = unsupported_reason(exprs + updates, layout)
    if reason:
        raise Unsupported(reason)
    for s in rec.states:
        if len(set(s.dims)) != len(s.dims):
            raise Unsupported(f"state '{s.name}' of shape {list(s.dims)} repeats a dim")
    blocked = next((d for d in layout.dims if d not in facts.contracted), None)
    used = {n.name for e in exprs + updates for n in walk(e) if isinstance(n, Ref)}
    inputs = tuple((i.name, i.dims) for i in rec.inputs if i.name in used)
    params = tuple((p.name, p.dims) for p in rec.value_params() if p.name in used)
    states = tuple((s.name, s.dims) for s in rec.states)
    outs = tuple((o.name, o.expr.dims) for o in rec.outputs)

    def partial(dims):
        return blocked is not None and blocked not in dims

    # module-level names first: no kernel parameter or local may shadow them
    module = Namespace(MODULE_NAMES)
    forward = module.name(("kernel", "forward"), f"{rec.name}_scan_fwd")
    backward = module.name(("kernel", "backward"), f"{rec.name}_scan_bwd")
    n_groups = len(analysis.form.blocks) if isinstance(analysis.form, DiagonalForm) else len(states)
    functions: dict = {"shift": module.name(("shift",), "_shift_combine")}
    for g in range(n_groups):
        functions[g] = {
            "combine": module.name(("combine", g), f"_combine_{g}"),
            "combine_adjoint": module.name(("combine_adjoint", g), f"_combine_adjoint_{g}"),
        }
    ns = module.child()
    for name in _KERNEL_NAMES:
        ns.name(("kernel", name), name)
    layout = layout.with_names(ns)
    sizes = tuple(ns.name(("size", d), f"size_{d}") for d in layout.dims)

    def arg(key, axes, dims, pointer):
        return _tensor_arg(ns, key, axes, dims, pointer)

    forward_args = (
        *(arg(("input", n), ("b", "t", "h"), d, f"{n}_ptr") for n, d in inputs),
        *(arg(("param", n), ("h",), d, f"{n}_ptr") for n, d in params),
        *(arg(("init", n), ("b", "h"), d, f"{n}_init_ptr") for n, d in states),
        *(arg(("out", n), ("b", "t", "h"), d, f"{n}_out_ptr") for n, d in outs),
        *(arg(("final", n), ("b", "h"), d, f"{n}_final_ptr") for n, d in states),
        *(arg(("ckpt", n), ("b", "h", "k"), d, f"{n}_ckpt_ptr") for n, d in states),
    )
    backward_args = (
        *(arg(("input", n), ("b", "t", "h"), d, f"{n}_ptr") for n, d in inputs),
        *(arg(("param", n), ("h",), d, f"{n}_ptr") for n, d in params),
        *(arg(("ckpt", n), ("b", "h", "k"), d, f"{n}_ckpt_ptr") for n, d in states),
        *(arg(("dout", n), ("b", "t", "h"), d, f"{n}_dout_ptr") for n, d in outs),
        *(arg(("dfinal", n), ("b", "h"), d, f"{n}_dfinal_ptr") for n, d in states),
        *(arg(("input_grad", n), ("c", "b", "t", "h"), d, f"{n}_grad_ptr") for n, d in inputs),
        *(arg(("param_grad", n), ("b", "h", "c"), d, f"{n}_grad_ptr") for n, d in params),
        *(
            arg(("dinit", n), ("c", "b", "h") if partial(d) else ("b", "h"), d, f"{n}_dinit_ptr")
            for n, d in states
        ),
    )
    return ScanKernelPlan(
        forward=forward,
        backward=backward,
        layout=layout,
        blocked=blocked,
        inputs=inputs,
        params=params,
        states=states,
        outputs=outs,
        readouts=tuple(outputs),
        old_read=old_read,
        forward_args=forward_args,
        backward_args=backward_args,
        sizes=sizes,
        functions=functions,
        names=ns,
        tile_scale=_tile_scale(analysis, len(states)),
    )


def _tile_scale(analysis, n_states: int) -> int:
    """Slots of the scanned maps per element (k^2 + k for each k x k block; a and b for
    a MinMax state) over those of one 2 x 2 block, at least 1."""
    if isinstance(analysis.form, DiagonalForm):
        slots = sum(b.size**2 + b.size for b in analysis.form.blocks)
    else:
        slots = 2 * n_states
    return max(1, -(-slots // 6))


_cite = cite


# ---- structure of a block: which slots of its maps can be non-zero -----------


def _closure(pattern: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """Entries of every product of matrices with this sparsity (powers >= 1)."""
    result = set(pattern)
    while True:
        grown = result | {(i, j) for (i, m) in result for (m2, j) in pattern if m == m2}
        if grown == result:
            return result
        result = grown


@dataclass(frozen=True)
class _BlockStructure:
    """Slots of a diagonal block's maps. Forward maps h -> A h + b: A over `a`,
    b over `b`. Adjoint maps (u -> (R u + r, S u + s)): R and S over `adjoint`
    (J^T's closure, with the diagonal for padded steps' identity)."""

    k: int
    own: frozenset[tuple[int, int]]  # the coupling the spec has
    a: tuple[tuple[int, int], ...]
    b: tuple[int, ...]
    adjoint: tuple[tuple[int, int], ...]

    @staticmethod
    def of(block: DiagonalBlock) -> _BlockStructure:
        k = block.size
        own = {(i, j) for i in range(k) for j in range(k) if block.coupling[i][j] is not None}
        a = _closure(own)
        b = {i for i in range(k) if block.inject[i] is not None}
        while True:
            grown = b | {i for (i, m) in a if m in b}
            if grown == b:
                break
            b = grown
        transposed = {(j, i) for (i, j) in own}
        adjoint = _closure(transposed | {(i, i) for i in range(k)}) if own else set()
        return _BlockStructure(
            k, frozenset(own), tuple(sorted(a)), tuple(sorted(b)), tuple(sorted(adjoint))
        )


def _applied(algebra: Algebra, slots: dict[str, str], state: dict[str, str]) -> dict[str, str]:
    """`algebra`'s apply printed: `slots` maps each present slot to the variable that
    holds it (the others are absent), `state` each component to its variable. A result
    that comes out absent (no slot reaches it) is left out."""
    exprs = algebra.specialize_apply(frozenset(slots))
    return {x: ungrouped(inline(e, slots | state)) for x, e in exprs.items()}


def _sum_or_zero(terms: list[str], like: str) -> str:
    return " + ".join(terms) if terms else f"tl.zeros_like({like})"


def _jit(name: str, params: list[str], doc: str, results: list[str]) -> list[str]:
    lines = ["@triton.jit", f"def {name}({', '.join(params)}):", f"    # {doc}", "    return ("]
    lines += [f"        {r}," for r in results]
    return lines + ["    )", "", ""]


def _printed(
    name: str, algebra: Algebra, present: frozenset[str], doc: str, order: list[str]
) -> list[str]:
    """A combine of `algebra` as a @triton.jit function over the `present` slots of
    both maps, returning the slots in `order` (a slot no product reaches is a zero
    tile shaped like the first map's: the scan needs every slot it is given)."""
    params = [operand(slot, w) for w in (1, 2) for slot in order]
    combine = algebra.specialize_combine(present, present)
    names = {p: p for p in params}
    results = [
        ungrouped(inline(combine[slot], names))
        if slot in combine
        else f"tl.zeros_like({operand(slot, 1)})"
        for slot in order
    ]
    return _jit(name, params, doc, results)


def _diagonal_combines(names: dict[str, str], st: _BlockStructure) -> list[str]:
    """The forward and adjoint combines of a block, over its slots only
    (`recc.lowering.algebra`: affine and pair maps).

    Every combine takes (earlier, later) in application order and returns
    "earlier, then later" (Triton's reverse scans hand the step nearer the
    end first, which is the one applied first to the adjoint)."""
    lines: list[str] = []
    if st.a:
        order = [f"a_{i}{j}" for i, j in st.a] + [f"b_{i}" for i in st.b]
        doc = "h -> A1 h + b1, then h -> A2 h + b2: (A2 A1, A2 b1 + b2)"
        lines += _printed(names["combine"], affine(st.k), frozenset(order), doc, order)
    if st.adjoint:
        k = st.k
        order = [f"{m}_{i}{j}" for m in ("r", "s") for i, j in st.adjoint]
        order += [f"{v}_{i}" for v in ("rv", "sv") for i in range(k)]
        doc = "u -> (R u + r, S u + s) composed: (R2 S1, S2 S1, R2 s1 + r2, S2 s1 + s2)"
        lines += _printed(names["combine_adjoint"], pair(k), frozenset(order), doc, order)
    return lines


def _minmax_combines(names: dict[str, str], semiring: str) -> list[str]:
    join = {"max-min": "max(min(h, a), b)", "max-plus": "max(h + a, b)"}
    doc = join.get(semiring, "min(h + a, b)").replace("a", "a1").replace("b", "b1")
    doc = f"{doc}, then {doc.replace('1', '2')}"
    fwd = _printed(names["combine"], minmax(semiring), frozenset("ab"), doc, ["a", "b"])
    # The adjoint's S is a routing (0 or 1): cotangents are selected, never
    # multiplied, so a NaN the state does not flow through stays where it is.
    doc = "u -> (R u + r, S u + s), R and S 0 or 1: (R2 S1, S2 S1, [R2] s1 + r2, [S2] s1 + s2)"
    order = ["r", "s", "rv", "sv"]
    back = _printed(names["combine_adjoint"], routing(), frozenset(order), doc, order)
    return fwd + back


def _shift_combine(name: str) -> list[str]:
    doc = "the last two values of a run of n: (last, the one before it, n)"
    order = ["v", "p", "n"]
    return _printed(name, shift(), frozenset(order), doc, order)


# ---- the writer -----------------------------------------------------------------


class _Writer:
    """Writes one kernel (forward or backward) in its own local scope."""

    def __init__(self, facts: ScanPlan, plan: ScanKernelPlan, ns: Namespace, fns) -> None:
        self.facts, self.plan = facts, plan
        rec, analysis = facts.spec, facts.analysis
        self.rec = rec
        self.layout = plan.layout
        self.form = analysis.form
        self.ns = ns
        self.fns = fns  # module-level function names (combines)
        if isinstance(self.form, DiagonalForm):
            self.groups: list = list(self.form.blocks)
            self.structures = [_BlockStructure.of(b) for b in self.form.blocks]
        else:
            self.groups = [s.name for s in rec.states]
            self.structures = []
        self.dependent = facts.reading_names
        self.args: dict[str, TensorArg] = {}
        self.seeded: set[str] = set()  # variables holding a seed's cotangent (every step's)

    def v(self, *key: object, preferred: str) -> str:
        """A local variable of this kernel."""
        return self.ns.name(key, preferred)

    def value(self, name: str) -> str:
        """The variable holding spec name `name`'s tile (an input, param or free let)."""
        return self.v("value", name, preferred=name)

    # -- addressing --
    def base(self, arg: TensorArg) -> str:
        """The variable holding `arg`'s pointer at this program's batch, head and
        channel block (the launch axes fixed for the whole program; see `setup`)."""
        stem = arg.pointer.removesuffix("_ptr")
        return self.v("base", *arg.key, preferred=f"{stem}_base")

    def offset(self, arg: TensorArg, time: bool = True) -> str:
        """The offset from `arg`'s base pointer: the time block (i_k), the step (t) and
        the tensor's own dims."""
        parts = []
        n = len(arg.axes)
        for axis, stride in zip(arg.axes, arg.strides[:n]):  # launch axes
            if axis == "t" and time:
                parts.append(f"{self.layout.time_index()} * {stride}")
            elif axis == "k":
                parts.append(f"i_k * {stride}")
        for dim, stride in zip(arg.dims, arg.strides[n:]):  # the tensor's own dims
            parts.append(f"{self.layout.index(dim)} * {stride}")
        return " + ".join(parts) if parts else "0"

    def base_pointers(self) -> list[str]:
        """Each tensor's pointer at this program's batch, head and channel block."""
        index = {"c": "i_c", "b": "i_b", "h": "i_h"}
        lines = ["# base pointers: this program's batch, head and channel block"]
        for arg in self.args.values():
            n = len(arg.axes)
            parts = [
                f"{index[axis]} * {stride}"
                for axis, stride in zip(arg.axes, arg.strides[:n])
                if axis in index
            ]
            lines.append(f"{self.base(arg)} = {' + '.join([arg.pointer, *parts])}")
        return lines

    def mask(self, dims, time: bool) -> str:
        parts = ([self.layout.mask(TIME)] if time else []) + [self.layout.mask(d) for d in dims]
        return " & ".join(parts) if parts else "None"

    def load(self, arg: TensorArg, time: bool) -> str:
        pointer = f"{self.base(arg)} + {self.offset(arg, time)}"
        m = self.mask(arg.dims, time and "t" in arg.axes)
        if m == "None":
            value = f"tl.load({pointer}).to(DTYPE)"
        else:
            value = f"tl.load({pointer}, mask={m}, other=0.0).to(DTYPE)"
        if not arg.dims and not (time and "t" in arg.axes):  # a scalar: as a [1, ...] tile
            value = f"({value} + tl.zeros({self.layout.shape((), time=False)}, DTYPE))"
        return value

    def store(self, arg: TensorArg, value: str, dims, time: bool) -> str:
        pointer = f"{self.base(arg)} + {self.offset(arg, time)}"
        shape = self.layout.shape(dims, time=time)
        full = f"({value} + tl.zeros({shape}, DTYPE))"
        if not dims and not time:  # a scalar slot: the [1, 1, ...] tile as a scalar
            full = f"tl.sum({full})"
        full = f"{full}.to({arg.pointer}.dtype.element_ty)"
        m = self.mask(dims, time)
        return f"tl.store({pointer}, {full}" + (f", mask={m})" if m != "None" else ")")

    # -- shared pieces --
    def signature(self, name: str, args: tuple[TensorArg, ...], flags: list[str]) -> list[str]:
        layout = self.layout
        lines = ["@triton.jit", f"def {name}("]
        lines += [f"    {a.pointer}," for a in args]
        lines += ["    T,", "    H,"] + [f"    {s}," for s in self.plan.sizes]
        lines += [f"    {s}," for a in args for s in a.strides]
        lines += [f"    {layout.block(TIME)}: tl.constexpr,"]
        lines += [f"    {layout.block(d)}: tl.constexpr," for d in layout.dims]
        lines += [f"    {f}: tl.constexpr," for f in flags] + ["    DTYPE: tl.constexpr,", "):"]
        self.args = {a.key: a for a in args}
        return lines

    def setup(self) -> list[str]:
        layout = self.layout
        lines = ["i_bh = tl.program_id(0)", "i_b = i_bh // H", "i_h = i_bh % H"]
        lines.append("i_c = tl.program_id(1)")
        for d, size in zip(layout.dims, self.plan.sizes):
            block = layout.block(d)
            start = f"i_c * {block} + " if d == self.plan.blocked else ""
            lines.append(f"{layout.offsets(d)} = {start}tl.arange(0, {block})")
            lines.append(f"{layout.mask(d)} = {layout.index(d)} < {size}")
        lines += self.base_pointers()
        if self.plan.params:
            lines.append("# params: loaded once")
        for n, _ in self.plan.params:
            lines.append(f"{self.value(n)} = {self.load(self.args[('param', n)], time=False)}")
        return lines

    def step_block(self, t0: str) -> list[str]:
        t = self.layout.time_index()
        lines = [
            f"{self.layout.offsets(TIME)} = {t0} + tl.arange(0, {self.layout.block(TIME)})",
            f"{self.layout.mask(TIME)} = {t} < T",
            f"is_first = {t} == {t0}",
        ]
        for n, _ in self.plan.inputs:
            lines.append(f"{self.value(n)} = {self.load(self.args[('input', n)], time=True)}")
        return lines

    def names(self) -> dict[str, str]:
        found = {n: self.value(n) for n, _ in self.plan.inputs}
        found.update({n: self.value(n) for n, _ in self.plan.params})
        return found

    def emitter(self) -> TileEmitter:
        return TileEmitter(self.layout, self.names(), self.ns)

    def state_var(self, kind: str, name: str) -> str:
        """A per-state variable: kind in carry, new, old, u, uu, g, dh."""
        return self.v(kind, name, preferred=f"{name}_{kind}")

    def lets_and_coefficients(self, emitter: TileEmitter) -> dict[int, dict]:
        """Emit the free lets and every group's coefficient tiles (identity on padded steps)."""
        rec, form = self.rec, self.form
        m_T = self.layout.mask(TIME)
        for let in rec.lets:
            if let.name in self.dependent:
                continue
            value = emitter.emit(let.expr)
            if not any(isinstance(n, Ref) for n in walk(let.expr)):  # a constant: typed,
                value = f"tl.full([], {value}, DTYPE)"  # or Triton would keep it in fp32
            var = self.value(let.name)
            emitter.lines.append(f"{var} = {value}  # {_cite(rec, let.span)}")
            emitter.names[let.name] = var
        coefficients: dict[int, dict] = {}
        for g, group in enumerate(self.groups):
            if isinstance(form, DiagonalForm):
                st = self.structures[g]
                dims = rec.state(group.states[0]).dims
                shape = self.layout.shape(dims)
                a = {}
                for i, j in st.own:
                    value = f"({emitter.emit(group.coupling[i][j])}) + tl.zeros({shape}, DTYPE)"
                    name = self.v("a", g, i, j, preferred=f"a{g}_{i}{j}")
                    # padded steps act as the identity (the adjoint scan passes through them)
                    emitter.lines.append(f"{name} = tl.where({m_T}, {value}, {float(i == j)!r})")
                    a[(i, j)] = name
                b = {}
                for i in range(st.k):
                    if group.inject[i] is not None:
                        value = f"({emitter.emit(group.inject[i])}) + tl.zeros({shape}, DTYPE)"
                        name = self.v("b", g, i, preferred=f"b{g}_{i}")
                        emitter.lines.append(f"{name} = tl.where({m_T}, {value}, 0.0)")
                        b[i] = name
                coefficients[g] = {
                    "a": a,
                    "b": b,
                    "dims": dims,
                    "exprs": (group.coupling, group.inject),
                }
            else:
                s = rec.state(group)
                a_expr, b_expr = form.coefficients[group]
                identity_a = INF if form.semiring == "max-min" else 0.0
                a = self.full(emitter, ("a", g), f"a{g}", a_expr, s.dims, identity_a)
                b = self.full(emitter, ("b", g), f"b{g}", b_expr, s.dims, form.identity_b)
                coefficients[g] = {"a": a, "b": b, "dims": s.dims, "exprs": (a_expr, b_expr)}
        return coefficients

    def full(self, emitter: TileEmitter, key, preferred: str, expr, dims, identity: float):
        """A MinMax coefficient tile: an absent one is the identity (exact: min(h, inf) = h,
        h + 0 = h, max(h, -inf) = h), as are padded steps."""
        shape = self.layout.shape(dims)
        name = self.v(*key, preferred=preferred)
        if expr is None:
            emitter.lines.append(f"{name} = tl.full({shape}, {literal(identity)}, DTYPE)")
        else:
            value = f"({emitter.emit(expr)}) + tl.zeros({shape}, DTYPE)"
            mask = self.layout.mask(TIME)
            emitter.lines.append(f"{name} = tl.where({mask}, {value}, {literal(identity)})")
        return name

    def group_states(self, g: int) -> list[str]:
        group = self.groups[g]
        return list(group.states) if isinstance(group, DiagonalBlock) else [group]

    def cite(self, span) -> str:
        return _cite(self.rec, span)

    def group_cite(self, g: int) -> list[str]:
        names = self.group_states(g)
        spans = [u.span for u in self.rec.updates if u.name in names]
        return [f"# scan of {', '.join(names)}"] + [f"#   {_cite(self.rec, s)}" for s in spans]

    def zeros(self, dims) -> str:
        return f"tl.zeros({self.layout.shape(dims)}, DTYPE)"

    # -- the forward scan, shared by both kernels --
    def forward_scan(self, g: int, c: dict) -> list[str]:
        """Every step's new state of group g from the carried state."""
        states = self.group_states(g)
        if isinstance(self.form, DiagonalForm):
            st = self.structures[g]
            dims = c["dims"]
            if not st.a:  # the update reads no state: nothing to scan
                return [
                    f"{self.state_var('new', s)} = {c['b'].get(i, self.zeros(dims))}"
                    + ("" if i in c["b"] else "  # the update is 0")
                    for i, s in enumerate(states)
                ]
            operands = [c["a"].get(slot, self.zeros(dims)) for slot in st.a]
            operands += [c["b"].get(i, self.zeros(dims)) for i in st.b]
            scanned_a = {
                slot: self.v("A", g, *slot, preferred=f"A{g}_{slot[0]}{slot[1]}") for slot in st.a
            }
            scanned_b = {i: self.v("B", g, i, preferred=f"B{g}_{i}") for i in st.b}
            lines = [
                # The trailing comma unpacks a scan of one operand too (it returns a 1-tuple).
                f"{', '.join([*scanned_a.values(), *scanned_b.values()])}, = tl.associative_scan("
                f"({', '.join(operands)},), 0, {self.fns[g]['combine']})"
            ]
            # the scanned maps applied to the carried state (the affine algebra's apply)
            names = {f"a_{i}{j}": v for (i, j), v in scanned_a.items()}
            names |= {f"b_{i}": v for i, v in scanned_b.items()}
            new = _applied(
                affine(st.k),
                names,
                {f"x_{j}": self.state_var("carry", s) for j, s in enumerate(states)},
            )
            for i, target in enumerate(states):
                value = new.get(f"x_{i}", self.zeros(dims))
                lines.append(f"{self.state_var('new', target)} = {value}")
            return lines
        (name,) = states
        A, B = self.v("A", g, preferred=f"A{g}"), self.v("B", g, preferred=f"B{g}")
        lines = [
            f"{A}, {B} = tl.associative_scan(({c['a']}, {c['b']}), 0, {self.fns[g]['combine']})"
        ]
        # the scanned map applied to the carried state (the semiring's apply)
        new = _applied(
            minmax(self.form.semiring), {"a": A, "b": B}, {"x_0": self.state_var("carry", name)}
        )
        lines.append(f"{self.state_var('new', name)} = {new['x_0']}")
        return lines

    # -- forward --
    def forward(self) -> list[str]:
        plan, rec = self.plan, self.rec
        lines = self.signature(plan.forward, plan.forward_args, ["STORE_FINAL", "STORE_CKPT"])
        body = self.setup()
        body.append("# initial states")
        for n, _ in plan.states:
            body.append(
                f"{self.state_var('carry', n)} = {self.load(self.args[('init', n)], time=False)}"
            )
        block_t = self.layout.block(TIME)
        body.append(f"for t0 in range(0, T, {block_t}):")
        loop = [f"i_k = t0 // {block_t}", "if STORE_CKPT:"]
        for n, dims in plan.states:
            loop.append(
                "    " + self.store(self.args[("ckpt", n)], self.state_var("carry", n), dims, False)
            )
        loop += self.step_block("t0")
        loop += [f"t_end = t0 + {block_t}", "if t_end > T:", "    t_end = T"]
        loop.append(
            f"is_last = {self.layout.time_index()} == t_end - 1  # the block's last real step"
        )
        emitter = self.emitter()
        coefficients = self.lets_and_coefficients(emitter)
        for g in range(len(self.groups)):
            emitter.lines += self.group_cite(g)
            emitter.lines += self.forward_scan(g, coefficients[g])
            for n in self.group_states(g):
                if n in plan.old_read:  # a readout reads h_{t-1}
                    emitter.lines += self.shift(n)
        for n, _ in plan.states:
            emitter.names[n] = self.state_var("new", n)
            emitter.names[old_name(n)] = self.state_var("old", n)
        for o, readout in zip(rec.outputs, plan.readouts):
            value = emitter.emit(readout)
            emitter.lines.append(f"# {_cite(rec, o.span)}")
            emitter.lines.append(self.store(self.args[("out", o.name)], value, o.expr.dims, True))
        emitter.lines.append("# carry the state of the block's last real step")
        for n, _ in plan.states:
            last = f"tl.where(is_last, {self.state_var('new', n)}, 0.0)"
            emitter.lines.append(
                f"{self.state_var('carry', n)} = tl.sum({last}, axis=0, keep_dims=True)"
            )
        loop += emitter.lines
        body += ["    " + line for line in loop]
        body.append("if STORE_FINAL:")
        for n, dims in plan.states:
            body.append(
                "    "
                + self.store(self.args[("final", n)], self.state_var("carry", n), dims, False)
            )
        return lines + ["    " + line for line in body]

    # -- backward --
    def backward(self) -> list[str]:
        plan, rec, layout = self.plan, self.rec, self.layout
        lines = self.signature(plan.backward, plan.backward_args, [])
        body = self.setup()
        body.append("# adjoint entering from after the last step: the final state's cotangent")
        for n, dims in plan.states:
            dfinal = self.once(self.load(self.args[("dfinal", n)], time=False), dims)
            body.append(f"{self.state_var('u', n)} = {dfinal}")
        for n, dims in plan.params:
            zeros = f"tl.zeros({layout.shape(dims, time=False)}, DTYPE)"
            body.append(f"{self.v('acc', n, preferred=f'{n}_acc')} = {zeros}")
        body.append(f"n_blocks = tl.cdiv(T, {layout.block(TIME)})")
        body.append("for i_rev in range(0, n_blocks):")
        loop = ["i_k = n_blocks - 1 - i_rev", f"t0 = i_k * {layout.block(TIME)}"]
        loop += self.step_block("t0")
        loop.append(f"is_final = {layout.time_index()} == T - 1")
        for n, _ in plan.states:
            loop.append(
                f"{self.state_var('carry', n)} = {self.load(self.args[('ckpt', n)], time=False)}"
            )
        emitter = self.emitter()
        coefficients = self.lets_and_coefficients(emitter)
        loop += emitter.lines
        emitter.lines = []
        # h_t by the forward's own scan (the same values), h_{t-1} by a shift
        for g in range(len(self.groups)):
            loop += self.group_cite(g)
            loop += self.forward_scan(g, coefficients[g])
            for n in self.group_states(g):
                loop += self.shift(n)
        for n, _ in plan.states:
            emitter.names[n] = self.state_var("new", n)
            emitter.names[old_name(n)] = self.state_var("old", n)
        outputs = list(plan.readouts)
        for readout in outputs:
            emitter.emit(readout)
        loop += emitter.lines
        emitter.lines = []
        # reverse-mode AD of the readouts (recc.ir.autodiff): cotangents of the states
        loop.append("# output cotangents")
        seeds = []
        for o, readout in zip(rec.outputs, outputs):
            arg = self.args[("dout", o.name)]
            var = self.v("dy", o.name, preferred=f"{o.name}_dy")
            loop.append(f"{var} = {self.once(self.load(arg, time=True), o.expr.dims)}")
            seeds.append((readout, self.cotangent_ref(emitter, var, o.expr.dims)))
        held = {n for n, _ in plan.states} | {old_name(n) for n, _ in plan.states}
        of_states = vjp(seeds, wrt=held.__contains__, varies=self.varies)
        self.label(emitter, of_states)
        for n, dims in plan.states:
            mask = self.mask(dims, True)
            for kind, name in (("dh", n), ("dold", old_name(n))):
                if kind == "dold" and n not in plan.old_read:
                    continue  # h_{t-1}'s cotangent from the readouts at t, if any reads it
                ct = of_states.of(name)
                value = "0.0" if ct is None else emitter.emit(ct)
                full = f"{value} + tl.zeros({layout.shape(dims)}, DTYPE)"
                emitter.lines.append(f"{self.state_var(kind, n)} = tl.where({mask}, {full}, 0.0)")
        loop += emitter.lines
        emitter.lines = []
        # the adjoint scan, and the seeds it gives the coefficients (diagonal) or the
        # update as written (MinMax)
        for g in range(len(self.groups)):
            if isinstance(self.form, DiagonalForm):
                step, more = self.diagonal_adjoint(g, coefficients[g], emitter)
            else:
                step, more = self.minmax_adjoint(g, coefficients[g], emitter)
            loop += step
            seeds += more
        loop.append("# reverse-mode AD of the lets and gates")
        free = [let for let in rec.lets if let.name not in self.dependent]
        leaves = {n for n, _ in plan.inputs} | {n for n, _ in plan.params}
        found = vjp(
            seeds,
            [(let.name, let.expr) for let in free],
            wrt=leaves.__contains__,
            varies=self.varies,
        )
        self.label(emitter, found)
        for let in reversed(free):  # a let's cotangent, then the way back through it
            ct = found.of(let.name)
            if ct is None:
                continue
            emitter.emit(ct)
            emitter.lines.append(f"# back through {self.cite(let.span)}")
            for node in walk(let.expr):
                if node in found.nodes:
                    emitter.emit(found.nodes[node])
        for n, dims in plan.inputs:
            ct = found.of(n)
            if ct is not None:
                emitter.lines.append(
                    self.store(self.args[("input_grad", n)], emitter.emit(ct), dims, True)
                )
        for n, _ in plan.params:
            ct = found.of(n)
            if ct is not None:
                acc = self.v("acc", n, preferred=f"{n}_acc")
                value = emitter.emit(ct)
                emitter.lines.append(f"{acc} += {value}  # already summed over the block's steps")
        loop += emitter.lines
        emitter.lines = []
        loop.append("# the adjoint handed to the previous block: u at the block's first step")
        for n, _ in plan.states:
            first = f"tl.where(is_first, {self.state_var('uu', n)}, 0.0)"
            loop.append(f"{self.state_var('u', n)} = tl.sum({first}, axis=0, keep_dims=True)")
        body += ["    " + line for line in loop]
        body.append("# d initial state = u_0; params' cotangents summed over this program's steps")
        for n, dims in plan.states:
            body.append(self.store(self.args[("dinit", n)], self.state_var("u", n), dims, False))
        for n, dims in plan.params:
            body.append(
                self.store(
                    self.args[("param_grad", n)],
                    self.v("acc", n, preferred=f"{n}_acc"),
                    dims,
                    False,
                )
            )
        return lines + ["    " + line for line in body]

    def shift(self, name: str) -> list[str]:
        """h_{t-1} of every step of the block: the block's entering state, then h_t
        one step later (a scan that only selects values, so it is exact)."""
        new, old = self.state_var("new", name), self.state_var("old", name)
        prev = self.v("prev", name, preferred=f"{name}_prev")
        ones = f"tl.full({self.layout.shape(self.rec.state(name).dims)}, 1.0, DTYPE)"
        n = self.v("run", name, preferred=f"{name}_run")
        # the runs applied to the block's entering state: h_{t-1} (the shift's apply)
        applied = _applied(
            shift(), {"v": new, "p": prev, "n": n}, {"x": self.state_var("carry", name)}
        )
        return [
            f"_, {prev}, {n} = tl.associative_scan(({new}, {new}, {ones}), 0, {self.fns['shift']})",
            f"{old} = {applied['old']}",
        ]

    def old_cotangent(self, name: str) -> list[str]:
        """The readouts' cotangent of h_{t-1} (a term of u_t), if any readout reads it."""
        return [self.state_var("dold", name)] if name in self.plan.old_read else []

    def once(self, value: str, dims) -> str:
        """A cotangent of a value without the split dim: every channel block computes that
        value alike, so only block 0 takes its cotangent (the partial sums then add up)."""
        if self.plan.blocked is None or self.plan.blocked in dims:
            return value
        return f"tl.where(i_c == 0, {value}, 0.0)"

    def cotangent_ref(self, emitter: TileEmitter, var: str, dims) -> Ref:
        """A cotangent the kernel holds in `var`, as a name the IR's vjp can read."""
        emitter.names[var] = var
        self.seeded.add(var)
        return Ref(tuple(dims), var, COTANGENT)

    def varies(self, name: str) -> bool:
        """Whether a name has a time axis in the tile (a seed's cotangent has)."""
        return name in self.seeded or name in self.facts.time_varying

    @staticmethod
    def label(emitter: TileEmitter, found: Cotangents) -> None:
        """Name each cotangent after what it differentiates: `d_k` for spec name k,
        `d_t5` for the node the kernel holds in `_t5`."""
        for name, ct in found.names.items():
            emitter.labels.setdefault(ct, "d_" + "_".join(name.split()))
        for node, ct in found.nodes.items():
            held = emitter.memo.get(node)
            if held is not None and held.startswith("_"):
                emitter.labels.setdefault(ct, f"d{held}")

    def diagonal_adjoint(self, g: int, c: dict, emitter: TileEmitter):
        """g_t = dh_t + J_{t+1}^T g_{t+1} by a reverse scan. Returns the statements
        and the seeds it gives the coefficients: (a_ij, da_t = g_t h_{t-1}), (b_i, g_t)."""
        states = self.group_states(g)
        st = self.structures[g]
        dims = c["dims"]
        shape = self.layout.shape(dims)
        valid = self.mask(dims, True)
        k = st.k
        lines = [f"# adjoint of {', '.join(states)}: g_t = dL/dh_t, u_t = J_t^T g_t"]
        lines += self.group_cite(g)[1:]
        dh = [self.state_var("dh", s) for s in states]
        u = [self.state_var("u", s) for s in states]
        gs = [self.state_var("g", s) for s in states]
        uu = [self.state_var("uu", s) for s in states]
        if not st.adjoint:  # the update reads no state: J = 0, the adjoint stops here
            for i in range(k):
                lines.append(
                    f"{gs[i]} = tl.where({valid}, {dh[i]} + tl.where(is_final, {u[i]}, 0.0), 0.0)"
                )
                lines.append(f"{uu[i]} = {self.zeros(dims)}")
        else:
            # J^T of each step, over the adjoint's slots; padded steps are the identity
            jt = {}
            for i, j in st.adjoint:  # slot (i, j) of J^T is J[j][i]
                if (j, i) in c["a"]:
                    jt[(i, j)] = c["a"][(j, i)]
                else:
                    # a slot the spec lacks: 0 on real steps, the identity's on padded ones
                    padded = f"tl.where({self.layout.mask(TIME)}, 0.0, {float(i == j)!r})"
                    jt[(i, j)] = f"({padded} + tl.zeros({shape}, DTYPE))"
            eye = {s: f"tl.full({shape}, {float(s[0] == s[1])!r}, DTYPE)" for s in st.adjoint}
            # u_t = J_t^T (dh_t + u_{t+1}) + d_old_t: a readout of h_{t-1} adds its cotangent
            jt_dh = [
                "("
                + _sum_or_zero(
                    [f"{jt[(i, m)]} * {dh[m]}" for m in range(k) if (i, m) in jt]
                    + self.old_cotangent(states[i]),
                    dh[i],
                )
                + ")"
                for i in range(k)
            ]
            operands = [*eye.values(), *jt.values(), *dh, *jt_dh]
            R = {s: self.v("R", g, *s, preferred=f"R{g}_{s[0]}{s[1]}") for s in st.adjoint}
            S = {s: self.v("U", g, *s, preferred=f"U{g}_{s[0]}{s[1]}") for s in st.adjoint}
            r = [self.v("R", g, i, preferred=f"R{g}_{i}") for i in range(k)]
            sv = [self.v("U", g, i, preferred=f"U{g}_{i}") for i in range(k)]
            lines.append(
                f"{', '.join([*R.values(), *S.values(), *r, *sv])} = tl.associative_scan("
                f"({', '.join(operands)},), 0, {self.fns[g]['combine_adjoint']}, reverse=True)"
            )
            # the scanned maps applied to u (the pair algebra's apply): g_t, and u_t
            names = {f"r_{i}{j}": v for (i, j), v in R.items()}
            names |= {f"s_{i}{j}": v for (i, j), v in S.items()}
            names |= {f"rv_{i}": r[i] for i in range(k)} | {f"sv_{i}": sv[i] for i in range(k)}
            applied = _applied(pair(k), names, {f"u_{j}": u[j] for j in range(k)})
            for i in range(k):
                lines.append(f"{gs[i]} = tl.where({valid}, {applied[f'g_{i}']}, 0.0)")
                lines.append(f"{uu[i]} = {applied[f'u_{i}']}")
        coupling, inject = c["exprs"]
        m_T = self.layout.mask(TIME)
        seeds = []
        for i in range(len(states)):
            for j, other in enumerate(states):
                if coupling[i][j] is not None:
                    da = self.v("da", g, i, j, preferred=f"da{g}_{i}{j}")
                    lines.append(
                        f"{da} = tl.where({m_T}, {gs[i]} * {self.state_var('old', other)}, 0.0)"
                    )
                    seeds.append((coupling[i][j], self.cotangent_ref(emitter, da, dims)))
            if inject[i] is not None:
                seeds.append((inject[i], self.cotangent_ref(emitter, gs[i], dims)))
        return lines, seeds

    def minmax_adjoint(self, g: int, c: dict, emitter: TileEmitter):
        """MinMax: the routing and the operands' cotangents from the spec's own update,
        at h_{t-1}. Returns the statements and the seed (the update, g_t)."""
        (name,) = self.group_states(g)
        rec = self.rec
        dims = c["dims"]
        shape = self.layout.shape(dims)
        valid = self.mask(dims, True)
        m_T = self.layout.mask(TIME)
        # the update as written, its lets of the state written out, the state read as
        # h_{t-1}: the values the forward's step computed
        at_old: dict[str, Expr] = {s.name: old_state(s) for s in rec.states}
        for let in rec.lets:
            if let.name in self.dependent:
                at_old[let.name] = substitute(let.expr, at_old)
        update = substitute(rec.update_of(name), at_old)
        lines = [f"# adjoint of {name}: its routing from the update as written, at the old state"]
        lines.append(f"# {_cite(rec, next(u.span for u in rec.updates if u.name == name))}")
        # d h_t / d h_{t-1}: the update's cotangent 1 routed to the state (0 or 1)
        ones = self.v("ones", g, preferred=f"ones{g}")
        lines.append(f"{ones} = tl.full({shape}, 1.0, DTYPE)")
        seed = self.cotangent_ref(emitter, ones, dims)
        routed = vjp([(update, seed)], wrt={old_name(name)}.__contains__, varies=self.varies)
        through = routed.of(old_name(name))
        value = (
            "0.0" if through is None else f"({emitter.emit(through)}) + tl.zeros({shape}, DTYPE)"
        )
        lines += emitter.lines
        emitter.lines = []
        rho = self.v("rho", g, preferred=f"rho{g}")
        lines.append(
            f"{rho} = tl.where({m_T}, {value}, 1.0)  # d h_t / d h_(t-1), 1 on padded steps"
        )
        dh, u = self.state_var("dh", name), self.state_var("u", name)
        gs, uu = self.state_var("g", name), self.state_var("uu", name)
        routed_dh = f"tl.where({rho} != 0.0, {dh}, 0.0)"
        if name in self.plan.old_read:  # u_t = rho_t (dh_t + u_{t+1}) + d_old_t
            routed_dh = f"({routed_dh} + {self.state_var('dold', name)})"
        R, U = self.v("R", g, preferred=f"R{g}"), self.v("U", g, preferred=f"U{g}")
        Rv, Uv = self.v("Rv", g, preferred=f"Rv{g}"), self.v("Uv", g, preferred=f"Uv{g}")
        one = f"tl.full({shape}, 1.0, DTYPE)"
        lines.append(
            f"{R}, {U}, {Rv}, {Uv} = tl.associative_scan(({one}, {rho}, {dh}, {routed_dh}), "
            f"0, {self.fns[g]['combine_adjoint']}, reverse=True)"
        )
        # the scanned maps applied to u (the routing algebra's apply): g_t, and u_t
        apply = routing().apply
        scanned = {"r": R, "s": U, "rv": Rv, "sv": Uv, "u": u}
        g_t = ungrouped(inline(apply["g"], scanned))
        lines.append(f"{gs} = tl.where({valid}, {g_t}, 0.0)")
        lines.append(f"{uu} = {ungrouped(inline(apply['u'], scanned))}")
        # the operands' cotangents: g_t pushed back through the update as written
        return lines, [(update, self.cotangent_ref(emitter, gs, dims))]


def kernel_spec(facts: ScanPlan) -> ScanPlan:
    """The plan of the spec the kernels compute: `facts` without its unread states.

    A state nothing reads is seen only as a final state: the kernels leave it
    out, and `triton_scan` (and a `recc build` module) compute its final from
    its update at the last step, as the loop does. The backward kernel would
    differentiate every step's update, multiplying the earlier steps' zero
    cotangents by derivatives that may be infinite (0 * inf = NaN; see
    recc.analysis.liveness)."""
    for name in facts.unread:
        read = facts.update_reads[name]
        if read:
            raise Unsupported(
                f"state '{name}' is read by no update or output, and its update reads "
                f"state '{read[0]}': its final needs '{read[0]}' one step before the end, "
                "which the kernels do not keep; the torch backend computes it"
            )
    if facts.kernel is None:
        raise Unsupported(
            "no update or output reads any state, so there is nothing to scan; "
            "the torch backend computes the final states from the last step"
        )
    return facts.kernel


def generate_scan_module(facts: ScanPlan) -> tuple[str, ScanKernelPlan]:
    """The source of a module with the forward and backward scan kernels of `facts`
    (a kernel plan: `kernel_spec`)."""
    rec, analysis = facts.spec, facts.analysis
    plan = plan_scan_kernel(facts)
    fns = plan.functions
    forward = _Writer(facts, plan, plan.names.child(), fns)
    backward = _Writer(facts, plan, plan.names.child(), fns)
    out = [
        f'"""Triton scan kernels for recurrence `{rec.name}` ({docstring_text(rec.filename)}), '
        "generated by recc.",
        "",
        f"Class: {analysis.kind}" + (f" ({analysis.semiring})" if analysis.semiring else "") + ".",
        f"Tile axes: (time, {', '.join(plan.layout.dims)}); programs split dim {plan.blocked}.",
        "DTYPE is the compute type: fp32, or fp64 for fp64 inputs. The spec:",
        "",
        *[f"    {line}" for line in docstring_text(rec.source.strip()).splitlines()],
        '"""',
        "",
        "import triton",
        "import triton.language as tl",
        "",
        "",
        HELPERS,
        "",
    ]
    out += _shift_combine(fns["shift"])
    for g, group in enumerate(forward.groups):
        if isinstance(group, DiagonalBlock):
            out += _diagonal_combines(fns[g], _BlockStructure.of(group))
        else:
            out += _minmax_combines(fns[g], analysis.semiring)
    out += forward.forward()
    out += ["", ""]
    out += backward.backward()
    return wrap_source("\n".join(out) + "\n"), plan

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
        carried state = the block's last row
    store the final state if asked

so its global traffic is the inputs once, the outputs once and the final state.

Backward kernel (same grid), blocks in reverse, from the checkpoints:

    recompute a_t, b_t and, by a scan over pairs, (h_t, h_{t-1}) for the block
    output cotangents -> d h_t (reverse-mode AD of the readouts, in the tile)
    reverse scan over pairs: (g_t, u_t), g_t = dL/dh_t, u_t = J_t^T g_t
        (each step's map (g', u') -> (dh_t + u', J_t^T (dh_t + u')) only uses
        the current step's J_t: no shifted loads)
    da_t = g_t (x) h_{t-1}, db_t = g_t; reverse AD through the gate expressions
    inputs' gradients stored per step; params' summed in registers;
    the initial state's gradient is u at t = 0.

Tensors without the channel-split dim get per-channel-block partial
gradients that the launcher sums (no atomics).
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis.forms import Analysis, DiagonalBlock, DiagonalForm, MinMaxForm
from recc.analysis.rewrite import state_dependent_lets
from recc.backends.triton.tile import (
    HELPERS,
    TileAdjoint,
    TileEmitter,
    TileLayout,
    contracted_dims,
    literal,
    unsupported_reason,
)
from recc.ir.nodes import Expr, Recurrence, Ref, walk

INF = float("inf")


@dataclass(frozen=True)
class TensorArg:
    """A tensor argument: pointer `{name}_ptr` and one stride per axis.

    Axes: "c" channel block (partial gradients), "b" batch, "t" time, "h"
    heads (stride 0 when there are none), "k" checkpoint index, then dims.
    """

    name: str
    axes: tuple[str, ...]
    dims: tuple[str, ...]

    @property
    def strides(self) -> list[str]:
        return [f"s_{self.name}_{a}" for a in (*self.axes, *self.dims)]


@dataclass(frozen=True)
class ScanKernelPlan:
    """What the launcher needs to know about the generated kernels."""

    forward: str  # the @triton.jit functions' names
    backward: str
    layout: TileLayout
    blocked: str | None  # the dim split across programs (never contracted)
    inputs: tuple[tuple[str, tuple[str, ...]], ...]
    params: tuple[tuple[str, tuple[str, ...]], ...]
    states: tuple[tuple[str, tuple[str, ...]], ...]
    outputs: tuple[tuple[str, tuple[str, ...]], ...]
    forward_args: tuple[TensorArg, ...]
    backward_args: tuple[TensorArg, ...]

    def partial(self, dims: tuple[str, ...]) -> bool:
        """Gradients of a tensor without the split dim are summed over channel blocks."""
        return self.blocked is not None and self.blocked not in dims


class Unsupported(Exception):
    """This spec has no Triton scan kernel (yet); the reason says why."""


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


def plan_scan_kernel(rec: Recurrence, analysis: Analysis) -> ScanKernelPlan:
    if not isinstance(analysis.form, (DiagonalForm, MinMaxForm)):
        raise Unsupported(f"the {analysis.kind} class has no scan kernel")
    names = {s.name for s in rec.states}
    dependent = state_dependent_lets(rec, names)
    free_lets = [let.expr for let in rec.lets if let.name not in dependent]
    outputs = [o.expr for o in rec.outputs]
    for o in rec.outputs:
        for node in walk(o.expr):
            if isinstance(node, Ref) and node.name in dependent:
                raise Unsupported(
                    f"output '{o.name}' reads let '{node.name}', which reads the old state"
                )
    coefficients = [e for e in _coefficients(analysis) if e is not None]
    exprs = free_lets + coefficients + outputs
    layout = _layout(rec, exprs)
    reason = unsupported_reason(exprs, layout)
    if reason:
        raise Unsupported(reason)
    contracted = contracted_dims(exprs)
    blocked = next((d for d in layout.dims if d not in contracted), None)
    used = {n.name for e in exprs for n in walk(e) if isinstance(n, Ref)}
    inputs = tuple((i.name, i.dims) for i in rec.inputs if i.name in used)
    params = tuple((p.name, p.dims) for p in rec.params if p.name in used)
    states = tuple((s.name, s.dims) for s in rec.states)
    outs = tuple((o.name, o.expr.dims) for o in rec.outputs)

    def partial(dims):
        return blocked is not None and blocked not in dims

    forward_args = (
        *(TensorArg(n, ("b", "t", "h"), d) for n, d in inputs),
        *(TensorArg(n, ("h",), d) for n, d in params),
        *(TensorArg(f"{n}_init", ("b", "h"), d) for n, d in states),
        *(TensorArg(f"{n}_out", ("b", "t", "h"), d) for n, d in outs),
        *(TensorArg(f"{n}_final", ("b", "h"), d) for n, d in states),
        *(TensorArg(f"{n}_ckpt", ("b", "h", "k"), d) for n, d in states),
    )
    backward_args = (
        *(TensorArg(n, ("b", "t", "h"), d) for n, d in inputs),
        *(TensorArg(n, ("h",), d) for n, d in params),
        *(TensorArg(f"{n}_ckpt", ("b", "h", "k"), d) for n, d in states),
        *(TensorArg(f"{n}_dout", ("b", "t", "h"), d) for n, d in outs),
        *(TensorArg(f"{n}_dfinal", ("b", "h"), d) for n, d in states),
        *(TensorArg(f"{n}_grad", ("c", "b", "t", "h"), d) for n, d in inputs),
        *(TensorArg(f"{n}_grad", ("b", "h", "c"), d) for n, d in params),
        *(
            TensorArg(f"{n}_dinit", ("c", "b", "h") if partial(d) else ("b", "h"), d)
            for n, d in states
        ),
    )
    return ScanKernelPlan(
        forward=f"{rec.name}_scan_fwd",
        backward=f"{rec.name}_scan_bwd",
        layout=layout,
        blocked=blocked,
        inputs=inputs,
        params=params,
        states=states,
        outputs=outs,
        forward_args=forward_args,
        backward_args=backward_args,
    )


def _cite(rec: Recurrence, span) -> str:
    """`spec line N: <the line>`, for comments in generated code."""
    if span is None:
        return "(no source line)"
    return f"spec line {span.line}: {rec.line(span)}"


# ---- combine functions --------------------------------------------------------


def _jit(name: str, params: list[str], doc: str, results: list[str]) -> list[str]:
    lines = ["@triton.jit", f"def {name}({', '.join(params)}):", f"    # {doc}", "    return ("]
    lines += [f"        {r}," for r in results]
    return lines + ["    )", "", ""]


def _matmul(x: list[list[str]], y: list[list[str]]) -> list[list[str]]:
    k = len(x)
    return [
        [" + ".join(f"{x[i][m]} * {y[m][j]}" for m in range(k)) for j in range(k)] for i in range(k)
    ]


def _matvec(x: list[list[str]], v: list[str], plus: list[str] | None = None) -> list[str]:
    k = len(x)
    return [
        " + ".join([f"{x[i][m]} * {v[m]}" for m in range(k)] + ([plus[i]] if plus else []))
        for i in range(k)
    ]


def _names(prefix: str, k: int) -> tuple[list[list[str]], list[str]]:
    return [[f"{prefix}{i}{j}" for j in range(k)] for i in range(k)], [
        f"{prefix}{i}" for i in range(k)
    ]


def _diagonal_combines(g: int, k: int) -> list[str]:
    """Forward, forward-pair and backward-pair combines of a k x k block.

    Every combine takes (earlier, later) in application order and returns
    "earlier, then later" (Triton's reverse scans hand the step nearer the
    end first, which is the one applied first to the adjoint).
    """
    a1, b1 = _names("a1_", k)
    a2, b2 = _names("a2_", k)
    params = [*sum(a1, []), *b1, *sum(a2, []), *b2]
    fwd = _jit(
        f"_combine_{g}",
        params,
        "h -> A1 h + b1, then h -> A2 h + b2: (A2 A1, A2 b1 + b2)",
        [*sum(_matmul(a2, a1), []), *_matvec(a2, b1, b2)],
    )
    # forward pairs: x -> (P x + p, Q x + q); h_t and h_{t-1} from the entering state
    p1, pv1 = _names("p1_", k)
    q1, qv1 = _names("q1_", k)
    p2, pv2 = _names("p2_", k)
    q2, qv2 = _names("q2_", k)
    params = [*sum(p1, []), *sum(q1, []), *pv1, *qv1, *sum(p2, []), *sum(q2, []), *pv2, *qv2]
    pair = _jit(
        f"_combine_pair_{g}",
        params,
        "x -> (P x + p, Q x + q) composed: (P2 P1, Q2 P1, P2 p1 + p2, Q2 p1 + q2)",
        [
            *sum(_matmul(p2, p1), []),
            *sum(_matmul(q2, p1), []),
            *_matvec(p2, pv1, pv2),
            *_matvec(q2, pv1, qv2),
        ],
    )
    # backward pairs: u' -> (R u' + r, S u' + s); gives (g_t, u_t) from the carry
    r1, rv1 = _names("r1_", k)
    s1, sv1 = _names("s1_", k)
    r2, rv2 = _names("r2_", k)
    s2, sv2 = _names("s2_", k)
    params = [*sum(r1, []), *sum(s1, []), *rv1, *sv1, *sum(r2, []), *sum(s2, []), *rv2, *sv2]
    back = _jit(
        f"_combine_adjoint_{g}",
        params,
        "u -> (R u + r, S u + s) composed: (R2 S1, S2 S1, R2 s1 + r2, S2 s1 + s2)",
        [
            *sum(_matmul(r2, s1), []),
            *sum(_matmul(s2, s1), []),
            *_matvec(r2, sv1, rv2),
            *_matvec(s2, sv1, sv2),
        ],
    )
    return fwd + pair + back


def _minmax_combines(g: int, semiring: str) -> list[str]:
    if semiring == "max-min":
        doc = "max(min(h, a1), b1), then max(min(h, a2), b2)"

        def then(a1, b1, a2, b2):
            return f"tl.minimum({a1}, {a2})", f"tl.maximum(tl.minimum({a2}, {b1}), {b2})"
    else:
        doc = "max(h + a1, b1), then max(h + a2, b2)"

        def then(a1, b1, a2, b2):
            return f"{a1} + {a2}", f"tl.maximum({b1} + {a2}, {b2})"

    fwd = _jit(f"_combine_{g}", ["a1", "b1", "a2", "b2"], doc, list(then("a1", "b1", "a2", "b2")))
    # pairs of maps x -> (F(x), G(x)): (F2 after F1, G2 after F1)
    pair = _jit(
        f"_combine_pair_{g}",
        ["fa1", "fb1", "ga1", "gb1", "fa2", "fb2", "ga2", "gb2"],
        "x -> (F x, G x) composed: (F2 F1, G2 F1)",
        [*then("fa1", "fb1", "fa2", "fb2"), *then("fa1", "fb1", "ga2", "gb2")],
    )
    back = _jit(
        f"_combine_adjoint_{g}",
        ["r1", "s1", "rv1", "sv1", "r2", "s2", "rv2", "sv2"],
        "u -> (R u + r, S u + s) composed: (R2 S1, S2 S1, R2 s1 + r2, S2 s1 + s2)",
        ["r2 * s1", "s2 * s1", "r2 * sv1 + rv2", "s2 * sv1 + sv2"],
    )
    return fwd + pair + back


# ---- the writer -----------------------------------------------------------------


class _Writer:
    def __init__(self, rec: Recurrence, analysis: Analysis, plan: ScanKernelPlan) -> None:
        self.rec, self.analysis, self.plan = rec, analysis, plan
        self.layout = plan.layout
        self.form = analysis.form
        if isinstance(self.form, DiagonalForm):
            self.groups: list = list(self.form.blocks)
        else:
            self.groups = [s.name for s in rec.states]
        self.dependent = state_dependent_lets(rec, {s.name for s in rec.states})
        self.args: dict[str, TensorArg] = {}

    # -- addressing --
    def offset(self, arg: TensorArg, time: bool = True) -> str:
        parts = []
        index = {"c": "i_c", "b": "i_b", "h": "i_h", "k": "i_k"}
        for axis, stride in zip((*arg.axes, *arg.dims), arg.strides):
            if axis == "t":
                if time:
                    parts.append(f"{self.layout.time_index()} * {stride}")
            elif axis in index:
                parts.append(f"{index[axis]} * {stride}")
            else:
                parts.append(f"{self.layout.index(axis)} * {stride}")
        return " + ".join(parts) if parts else "0"

    def mask(self, dims, time: bool) -> str:
        parts = (["m_T"] if time else []) + [f"m_{d}" for d in dims]
        return " & ".join(parts) if parts else "None"

    def load(self, arg: TensorArg, time: bool) -> str:
        pointer = f"{arg.name}_ptr + {self.offset(arg, time)}"
        m = self.mask(arg.dims, time and "t" in arg.axes)
        if m == "None":
            return f"tl.load({pointer}).to(DTYPE)"
        return f"tl.load({pointer}, mask={m}, other=0.0).to(DTYPE)"

    def store(self, arg: TensorArg, value: str, dims, time: bool) -> str:
        pointer = f"{arg.name}_ptr + {self.offset(arg, time)}"
        shape = self.layout.shape(dims, time=time)
        full = f"({value} + tl.zeros({shape}, DTYPE))"
        if not dims and not time:  # a scalar slot: the [1, 1, ...] tile as a scalar
            full = f"tl.sum({full})"
        full = f"{full}.to({arg.name}_ptr.dtype.element_ty)"
        m = self.mask(dims, time)
        return f"tl.store({pointer}, {full}" + (f", mask={m})" if m != "None" else ")")

    # -- shared pieces --
    def signature(self, name: str, args: tuple[TensorArg, ...], flags: list[str]) -> list[str]:
        lines = ["@triton.jit", f"def {name}("]
        lines += [f"    {a.name}_ptr," for a in args]
        lines += ["    T,", "    H,"] + [f"    size_{d}," for d in self.layout.dims]
        lines += [f"    {s}," for a in args for s in a.strides]
        lines += ["    BLOCK_T: tl.constexpr,"]
        lines += [f"    BLOCK_{d}: tl.constexpr," for d in self.layout.dims]
        lines += [f"    {f}: tl.constexpr," for f in flags] + ["    DTYPE: tl.constexpr,", "):"]
        self.args = {a.name: a for a in args}
        return lines

    def setup(self) -> list[str]:
        lines = ["i_bh = tl.program_id(0)", "i_b = i_bh // H", "i_h = i_bh % H"]
        lines.append("i_c = tl.program_id(1)")
        for d in self.layout.dims:
            start = f"i_c * BLOCK_{d} + " if d == self.plan.blocked else ""
            lines.append(f"o_{d} = {start}tl.arange(0, BLOCK_{d})")
            lines.append(f"m_{d} = {self.layout.index(d)} < size_{d}")
        lines.append("# params: loaded once")
        for n, _ in self.plan.params:
            lines.append(f"{n} = {self.load(self.args[n], time=False)}")
        return lines

    def step_block(self, t0: str) -> list[str]:
        lines = [
            f"o_T = {t0} + tl.arange(0, BLOCK_T)",
            f"m_T = {self.layout.time_index()} < T",
            f"is_first = {self.layout.time_index()} == {t0}",
            f"is_last = {self.layout.time_index()} == {t0} + BLOCK_T - 1",
        ]
        for n, _ in self.plan.inputs:
            lines.append(f"{n} = {self.load(self.args[n], time=True)}")
        return lines

    def names(self) -> dict[str, str]:
        found = {n: n for n, _ in self.plan.inputs}
        found.update({n: n for n, _ in self.plan.params})
        return found

    def lets_and_coefficients(self, emitter: TileEmitter) -> dict[int, dict]:
        """Emit the lets and every group's coefficient tiles (identity on padded steps)."""
        rec, form = self.rec, self.form
        for let in rec.lets:
            if let.name in self.dependent:
                continue
            value = emitter.emit(let.expr)
            if not any(isinstance(n, Ref) for n in walk(let.expr)):  # a constant: typed,
                value = f"tl.full([], {value}, DTYPE)"  # or Triton would keep it in fp32
            emitter.lines.append(f"{let.name} = {value}  # {_cite(rec, let.span)}")
            emitter.names[let.name] = let.name
        coefficients: dict[int, dict] = {}
        for g, group in enumerate(self.groups):
            if isinstance(form, DiagonalForm):
                k = group.size
                dims = rec.state(group.states[0]).dims
                a = [
                    [
                        self.full(
                            emitter,
                            f"a{g}_{i}{j}",
                            group.coupling[i][j],
                            dims,
                            0.0,
                            1.0 if i == j else 0.0,
                        )
                        for j in range(k)
                    ]
                    for i in range(k)
                ]
                b = [
                    self.full(emitter, f"b{g}_{i}", group.inject[i], dims, 0.0, 0.0)
                    for i in range(k)
                ]
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
                a = self.full(emitter, f"a{g}", a_expr, s.dims, identity_a, identity_a)
                b = self.full(emitter, f"b{g}", b_expr, s.dims, -INF, -INF)
                coefficients[g] = {"a": a, "b": b, "dims": s.dims, "exprs": (a_expr, b_expr)}
        return coefficients

    def full(self, emitter: TileEmitter, name: str, expr, dims, absent: float, identity: float):
        shape = self.layout.shape(dims)
        if expr is None:
            value = f"tl.full({shape}, {literal(absent)}, DTYPE)"
        else:
            value = f"({emitter.emit(expr)}) + tl.zeros({shape}, DTYPE)"
        emitter.lines.append(f"{name} = tl.where(m_T, {value}, {literal(identity)})")
        return name

    def group_states(self, g: int) -> list[str]:
        group = self.groups[g]
        return list(group.states) if isinstance(group, DiagonalBlock) else [group]

    def group_cite(self, g: int) -> list[str]:
        names = self.group_states(g)
        spans = [u.span for u in self.rec.updates if u.name in names]
        return [f"# scan of {', '.join(names)}"] + [f"#   {_cite(self.rec, s)}" for s in spans]

    # -- forward --
    def forward(self) -> list[str]:
        plan, rec = self.plan, self.rec
        lines = self.signature(plan.forward, plan.forward_args, ["STORE_FINAL", "STORE_CKPT"])
        body = self.setup()
        body.append("# initial states")
        for n, _ in plan.states:
            body.append(f"{n}_carry = {self.load(self.args[n + '_init'], time=False)}")
        body.append("for t0 in range(0, T, BLOCK_T):")
        loop = ["i_k = t0 // BLOCK_T", "if STORE_CKPT:"]
        for n, dims in plan.states:
            loop.append("    " + self.store(self.args[n + "_ckpt"], f"{n}_carry", dims, False))
        loop += self.step_block("t0")
        emitter = TileEmitter(self.layout, self.names())
        coefficients = self.lets_and_coefficients(emitter)
        for g in range(len(self.groups)):
            emitter.lines += self.group_cite(g)
            emitter.lines += self.forward_scan(g, coefficients[g])
        for n, _ in plan.states:
            emitter.names[n] = f"{n}_new"
        for o in rec.outputs:
            value = emitter.emit(o.expr)
            emitter.lines.append(f"# {_cite(rec, o.span)}")
            emitter.lines.append(self.store(self.args[o.name + "_out"], value, o.expr.dims, True))
        emitter.lines.append("# carry the block's last row (padded steps were the identity)")
        for n, _ in plan.states:
            emitter.lines.append(
                f"{n}_carry = tl.sum(tl.where(is_last, {n}_new, 0.0), axis=0, keep_dims=True)"
            )
        loop += emitter.lines
        body += ["    " + line for line in loop]
        body.append("if STORE_FINAL:")
        for n, dims in plan.states:
            body.append("    " + self.store(self.args[n + "_final"], f"{n}_carry", dims, False))
        return lines + ["    " + line for line in body]

    def forward_scan(self, g: int, c: dict) -> list[str]:
        states = self.group_states(g)
        if isinstance(self.form, DiagonalForm):
            k = len(states)
            operands = [*sum(c["a"], []), *c["b"]]
            scanned = [f"S{g}_{i}{j}" for i in range(k) for j in range(k)]
            scanned += [f"S{g}_{i}" for i in range(k)]
            lines = [
                f"{', '.join(scanned)} = tl.associative_scan(({', '.join(operands)},), 0, "
                f"_combine_{g})"
            ]
            for i, target in enumerate(states):
                terms = [f"S{g}_{i}{j} * {s}_carry" for j, s in enumerate(states)]
                lines.append(f"{target}_new = {' + '.join(terms)} + S{g}_{i}")
            return lines
        (name,) = states
        lines = [f"A{g}, B{g} = tl.associative_scan(({c['a']}, {c['b']}), 0, _combine_{g})"]
        inner = (
            f"tl.minimum({name}_carry, A{g})"
            if self.form.semiring == "max-min"
            else f"{name}_carry + A{g}"
        )
        lines.append(f"{name}_new = tl.maximum({inner}, B{g})")
        return lines

    # -- backward --
    def backward(self) -> list[str]:
        plan, rec, layout = self.plan, self.rec, self.layout
        lines = self.signature(plan.backward, plan.backward_args, [])
        body = self.setup()
        body.append("# adjoint entering from after the last step: the final state's cotangent")
        for n, dims in plan.states:
            body.append(
                f"{n}_u = {self.once(self.load(self.args[n + '_dfinal'], time=False), dims)}"
            )
        for n, dims in plan.params:
            body.append(f"{n}_acc = tl.zeros({layout.shape(dims, time=False)}, DTYPE)")
        body.append("n_blocks = tl.cdiv(T, BLOCK_T)")
        body.append("for i_rev in range(0, n_blocks):")
        loop = ["i_k = n_blocks - 1 - i_rev", "t_start = i_k * BLOCK_T"]
        loop += self.step_block("t_start")
        for n, _ in plan.states:
            loop.append(f"{n}_carry = {self.load(self.args[n + '_ckpt'], time=False)}")
        emitter = TileEmitter(layout, self.names())
        coefficients = self.lets_and_coefficients(emitter)
        loop += emitter.lines
        emitter.lines = []
        # states h_t and h_{t-1} of the block, by a scan over pairs of maps
        for g in range(len(self.groups)):
            loop += self.group_cite(g)
            loop += self.pair_scan(g, coefficients[g])
        for n, _ in plan.states:
            emitter.names[n] = f"{n}_new"
        outputs = [o.expr for o in rec.outputs]
        for o in rec.outputs:
            emitter.emit(o.expr)
        loop += emitter.lines
        emitter.lines = []
        # reverse-mode AD of the readouts: cotangents of the new states (and inputs)
        adjoint = TileAdjoint(emitter, self.timed_names())
        loop.append("# output cotangents")
        for o in rec.outputs:
            arg = self.args[o.name + "_dout"]
            var = f"{o.name}_dy"
            loop.append(f"{var} = {self.once(self.load(arg, time=True), o.expr.dims)}")
            adjoint.seed(o.expr, var, (True, o.expr.dims))
        loop += adjoint.run(outputs, stop_at_names=True)
        for n, dims in plan.states:
            dh = adjoint.name_cotangent(n)
            mask = self.mask(dims, True)
            value = "0.0" if dh is None else dh
            loop.append(
                f"{n}_dh = tl.where({mask}, {value} + tl.zeros({layout.shape(dims)}, DTYPE), 0.0)"
            )
        # the adjoint scan and the coefficient cotangents
        for g in range(len(self.groups)):
            loop += self.adjoint_scan(g, coefficients[g], adjoint)
        loop.append("# reverse-mode AD of the lets and gates")
        roots = [e for e in _coefficients(self.analysis) if e is not None] + outputs
        loop += adjoint.run(roots, lets=[let for let in rec.lets if let.name not in self.dependent])
        for n, dims in plan.inputs:
            ct = adjoint.name_cotangent(n)
            if ct is not None:
                loop.append(self.store(self.args[n + "_grad"], ct, dims, True))
        for n, _ in plan.params:
            ct = adjoint.name_cotangent(n)
            if ct is not None:
                loop.append(f"{n}_acc += {ct}  # already summed over the block's steps")
        loop.append("# the adjoint handed to the previous block: u at the block's first step")
        for n, _ in plan.states:
            loop.append(f"{n}_u = tl.sum(tl.where(is_first, {n}_uu, 0.0), axis=0, keep_dims=True)")
        body += ["    " + line for line in loop]
        body.append("# d initial state = u_0; params' cotangents summed over this program's steps")
        for n, dims in plan.states:
            body.append(self.store(self.args[n + "_dinit"], f"{n}_u", dims, False))
        for n, dims in plan.params:
            body.append(self.store(self.args[n + "_grad"], f"{n}_acc", dims, False))
        return lines + ["    " + line for line in body]

    def once(self, value: str, dims) -> str:
        """A cotangent of a value without the split dim: every channel block computes that
        value alike, so only block 0 takes its cotangent (the partial sums then add up)."""
        if self.plan.blocked is None or self.plan.blocked in dims:
            return value
        return f"tl.where(i_c == 0, {value}, 0.0)"

    def timed_names(self) -> dict[str, bool]:
        """Which names vary over time (have a time axis in the tile)."""
        timed = {n: True for n, _ in self.plan.inputs}
        timed.update({n: False for n, _ in self.plan.params})
        timed.update({n: True for n, _ in self.plan.states})
        for let in self.rec.lets:
            refs = {x.name for x in walk(let.expr) if isinstance(x, Ref)}
            timed[let.name] = any(timed.get(r, False) for r in refs)
        return timed

    def pair_scan(self, g: int, c: dict) -> list[str]:
        """(h_t, h_{t-1}) for every step of the block from the entering state."""
        states = self.group_states(g)
        shape = self.layout.shape(c["dims"])
        if isinstance(self.form, DiagonalForm):
            k = len(states)
            eye = [
                [f"tl.full({shape}, {1.0 if i == j else 0.0}, DTYPE)" for j in range(k)]
                for i in range(k)
            ]
            zero = [f"tl.zeros({shape}, DTYPE)"] * k
            operands = [*sum(c["a"], []), *sum(eye, []), *c["b"], *zero]
            P = [[f"P{g}_{i}{j}" for j in range(k)] for i in range(k)]
            Q = [[f"Q{g}_{i}{j}" for j in range(k)] for i in range(k)]
            p = [f"P{g}_{i}" for i in range(k)]
            q = [f"Q{g}_{i}" for i in range(k)]
            outs = [*sum(P, []), *sum(Q, []), *p, *q]
            lines = [
                f"{', '.join(outs)} = tl.associative_scan(({', '.join(operands)},), 0, "
                f"_combine_pair_{g})"
            ]
            for i, name in enumerate(states):
                new = " + ".join(f"{P[i][j]} * {s}_carry" for j, s in enumerate(states))
                old = " + ".join(f"{Q[i][j]} * {s}_carry" for j, s in enumerate(states))
                lines.append(f"{name}_new = {new} + {p[i]}")
                lines.append(f"{name}_old = {old} + {q[i]}")
            return lines
        (name,) = states
        identity_a = INF if self.form.semiring == "max-min" else 0.0
        operands = [
            c["a"],
            c["b"],
            f"tl.full({shape}, {literal(identity_a)}, DTYPE)",
            f"tl.full({shape}, {literal(-INF)}, DTYPE)",
        ]
        lines = [
            f"FA{g}, FB{g}, GA{g}, GB{g} = tl.associative_scan(({', '.join(operands)},), 0, "
            f"_combine_pair_{g})"
        ]
        lines.append(f"{name}_new = {self.apply_minmax(f'{name}_carry', f'FA{g}', f'FB{g}')}")
        lines.append(f"{name}_old = {self.apply_minmax(f'{name}_carry', f'GA{g}', f'GB{g}')}")
        return lines

    def apply_minmax(self, x: str, a: str, b: str) -> str:
        if self.form.semiring == "max-min":
            return f"tl.maximum(tl.minimum({x}, {a}), {b})"
        return f"tl.maximum({x} + {a}, {b})"

    def adjoint_scan(self, g: int, c: dict, adjoint: TileAdjoint) -> list[str]:
        """g_t = dh_t + J_{t+1}^T g_{t+1} by a reverse scan; then da_t, db_t as seeds."""
        states = self.group_states(g)
        dims = c["dims"]
        shape = self.layout.shape(dims)
        valid = self.mask(dims, True)
        lines = [f"# adjoint of {', '.join(states)}: g_t = dL/dh_t, u_t = J_t^T g_t"]
        if isinstance(self.form, DiagonalForm):
            k = len(states)
            a = c["a"]
            eye = [
                [f"tl.full({shape}, {1.0 if i == j else 0.0}, DTYPE)" for j in range(k)]
                for i in range(k)
            ]
            dh = [f"{s}_dh" for s in states]
            jt = [[a[j][i] for j in range(k)] for i in range(k)]  # J^T
            jt_dh = [f"({e})" for e in _matvec(jt, dh)]
            operands = [*sum(eye, []), *sum(jt, []), *dh, *jt_dh]
            R = [[f"R{g}_{i}{j}" for j in range(k)] for i in range(k)]
            S = [[f"U{g}_{i}{j}" for j in range(k)] for i in range(k)]
            r = [f"R{g}_{i}" for i in range(k)]
            s = [f"U{g}_{i}" for i in range(k)]
            lines.append(
                f"{', '.join([*sum(R, []), *sum(S, []), *r, *s])} = tl.associative_scan("
                f"({', '.join(operands)},), 0, _combine_adjoint_{g}, reverse=True)"
            )
            for i, name in enumerate(states):
                gi = " + ".join(f"{R[i][j]} * {t}_u" for j, t in enumerate(states))
                ui = " + ".join(f"{S[i][j]} * {t}_u" for j, t in enumerate(states))
                lines.append(f"{name}_g = tl.where({valid}, {gi} + {r[i]}, 0.0)")
                lines.append(f"{name}_uu = {ui} + {s[i]}")
            coupling, inject = c["exprs"]
            for i, name in enumerate(states):
                for j, other in enumerate(states):
                    if coupling[i][j] is not None:
                        lines.append(f"da{g}_{i}{j} = tl.where(m_T, {name}_g * {other}_old, 0.0)")
                        adjoint.seed(coupling[i][j], f"da{g}_{i}{j}", (True, dims))
                if inject[i] is not None:
                    adjoint.seed(inject[i], f"{name}_g", (True, dims))
            return lines
        (name,) = states
        a, b = c["a"], c["b"]
        if self.form.semiring == "max-min":
            inner = f"tl.minimum({name}_old, {a})"
            route = f"({name}_old <= {a}) & ({inner} >= {b})"
            to_a = f"({a} < {name}_old) & ({inner} >= {b})"
        else:
            inner = f"{name}_old + {a}"
            route = f"({inner} >= {b})"
            to_a = route
        lines.append(f"rho{g} = tl.where({route}, 1.0, 0.0)  # d h_t / d h_(t-1): 0 or 1")
        one = f"tl.full({shape}, 1.0, DTYPE)"
        operands = [one, f"rho{g}", f"{name}_dh", f"rho{g} * {name}_dh"]
        lines.append(
            f"R{g}, U{g}, Rv{g}, Uv{g} = tl.associative_scan(({', '.join(operands)},), "
            f"0, _combine_adjoint_{g}, reverse=True)"
        )
        lines.append(f"{name}_g = tl.where({valid}, R{g} * {name}_u + Rv{g}, 0.0)")
        lines.append(f"{name}_uu = U{g} * {name}_u + Uv{g}")
        a_expr, b_expr = c["exprs"]
        if a_expr is not None:
            lines.append(f"da{g} = tl.where(m_T & {to_a}, {name}_g, 0.0)")
            adjoint.seed(a_expr, f"da{g}", (True, c["dims"]))
        if b_expr is not None:
            lines.append(f"db{g} = tl.where(m_T & ({b} > {inner}), {name}_g, 0.0)")
            adjoint.seed(b_expr, f"db{g}", (True, c["dims"]))
        return lines


def generate_scan_module(rec: Recurrence, analysis: Analysis) -> tuple[str, ScanKernelPlan]:
    """The source of a module with the forward and backward scan kernels."""
    plan = plan_scan_kernel(rec, analysis)
    writer = _Writer(rec, analysis, plan)
    out = [
        f'"""Triton scan kernels for recurrence `{rec.name}` ({rec.filename}), generated by recc.',
        "",
        f"Class: {analysis.kind}" + (f" ({analysis.semiring})" if analysis.semiring else "") + ".",
        f"Tile axes: (time, {', '.join(plan.layout.dims)}); programs split dim {plan.blocked}.",
        "DTYPE is the compute type: fp32, or fp64 for fp64 inputs. The spec:",
        "",
        *[f"    {line}" for line in rec.source.strip().splitlines()],
        '"""',
        "",
        "import triton",
        "import triton.language as tl",
        "",
        "",
        HELPERS,
        "",
    ]
    for g, group in enumerate(writer.groups):
        if isinstance(group, DiagonalBlock):
            out += _diagonal_combines(g, group.size)
        else:
            out += _minmax_combines(g, analysis.semiring)
    out += writer.forward()
    out += ["", ""]
    out += writer.backward()
    return "\n".join(out) + "\n", plan

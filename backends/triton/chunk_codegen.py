"""Generate the Triton kernels of the chunkwise algorithm, rank 0 (a decayed matrix state).

Stage: backend (triton). Input: a `ChunkPlan` (recc.lowering.chunk) of rank 0,

    S_t = S_{t-1} diag(d_t) + sum_m y_{t,m} e_{t,m}^T,   S[rows, cols]
    o_t = f(S_t p_{t,1}, ...)                             (every output)

(GLA, RetNet, Mamba2, mLSTM read as S^T, mLSTM's normaliser as a companion row);
output: the source of a module with two kernels,
the same math as backends/torch/chunkwise.py (docs/lowering-chunkwise.md), every
coefficient computed in the kernel from the raw inputs (the spec's expressions
printed by `tile.TileEmitter`, one line per op):

  chunk_states   one program per (batch x head, block of rows): the state, carried
                 through time in sub-blocks of BLOCK_T steps,
                     S <- S * prod_s d_s + sum_s y_s^T (e_s * prod_{k>s} d_k)
                 stored as it enters every chunk of NSUB sub-blocks (fp32: the state
                 the outputs restart from), and at the end.
  chunk_outputs  one program per (batch x head, chunk, block of rows), its sub-blocks
                 in turn: each output from the state at its sub-block's start (the
                 entering state carried as in chunk_states) decayed by prefix(t), plus
                 its own sub-block's writes (for a scalar decay a [BLOCK_T, BLOCK_T]
                 table of segment products, else a masked cumulative product per
                 source step). The entering state and every input are read once.

Every rho is a product of decays, never a quotient or an exponential of log sums:
decays of 0, negative ones and runs that underflow stay exact, as on the torch path.
Suffix products come from a forward scan over the flipped sub-block (`tl.flip`,
`_all_but_last`): no reversed scan, whose combine order a backend might differ
on. Matrix products run at IEEE precision (no TF32). Forward only: the backward
lands in a later step (calls that need gradients run the torch path).
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.backends.names import Namespace, cite, docstring_text
from recc.backends.triton.tile import HELPERS, TIME, TileEmitter, TileLayout, unsupported_reason
from recc.backends.triton.wrap import wrap_source
from recc.ir.nodes import Apply, Expr, Ref, walk
from recc.lowering import ChunkPlan

# Steps per sub-block: the tiles' time extent (tl.dot needs at least 16).
BLOCK_T = 16
_REDUCTIONS = ("dot", "sum", "matmul", "sum_to")


class Unsupported(Exception):
    """This plan has no Triton chunkwise kernel (yet); the reason says why."""


@dataclass(frozen=True)
class ChunkKernelPlan:
    """What the launcher needs of the generated module, as names."""

    inputs: tuple[str, ...]  # spec input names, in kernel argument order
    params: tuple[str, ...]
    outputs: tuple[str, ...]
    blocks: dict  # axis (TIME, rows, cols) -> its BLOCK_ constexpr's name


def check(plan: ChunkPlan) -> None:
    """Unsupported if the kernels cannot take `plan`."""
    rec = plan.spec
    if plan.rank:
        raise Unsupported(f"rank {plan.rank}: the Triton chunkwise kernels take rank 0 so far")
    if plan.chunk % BLOCK_T:
        raise Unsupported(f"chunk {plan.chunk} is not a multiple of {BLOCK_T}")
    layout = TileLayout((plan.rows, plan.cols))
    exprs = [plan.decay, *(w.direction for w in plan.writes), *(w.inject for w in plan.writes)]
    exprs += [z for c in plan.companions for z in c.scales]
    exprs += [let.expr for let in plan.state_free_lets]
    for r in plan.readouts:
        exprs += [p.probe for p in r.probes] + ([r.expr] if r.expr is not None else [])
        out_dims = next(o.expr.dims for o in rec.outputs if o.name == r.name)
        if out_dims != (plan.rows,):
            raise Unsupported(f"output {r.name} is not a vector over {plan.rows}")
        for node in walk(r.expr) if r.expr is not None else ():
            if isinstance(node, Apply) and node.op in _REDUCTIONS:
                if any(plan.rows in a.dims for a in node.args) and plan.rows not in node.dims:
                    raise Unsupported(f"output {r.name} sums over {plan.rows}")
    reason = unsupported_reason([e for e in exprs if e is not None], layout)
    if reason is not None:
        raise Unsupported(reason)


def generate_chunk_module(plan: ChunkPlan) -> tuple[str, ChunkKernelPlan]:
    """The module's source and its kernel plan (Unsupported if there is none)."""
    check(plan)
    rec = plan.spec
    ns = Namespace(reserved=("tl", "triton"))
    layout = TileLayout((plan.rows, plan.cols)).with_names(ns)
    kernel_plan = ChunkKernelPlan(
        inputs=tuple(i.name for i in rec.inputs),
        params=tuple(p.name for p in rec.params) + tuple(rec.dim_values),
        outputs=tuple(r.name for r in plan.readouts),
        blocks={axis: layout.block(axis) for axis in (TIME, plan.rows, plan.cols)},
    )
    writer = _Writer(plan, layout, ns, kernel_plan)
    out = [
        f'"""Triton chunkwise kernels for recurrence `{rec.name}` '
        f"({docstring_text(rec.filename)}), generated by recc.",
        "",
        f"State {plan.state} read as [{plan.rows}, {plan.cols}]"
        + (f" (the spec's {plan.state}^T)" if plan.transposed else "")
        + "; docs/lowering-chunkwise.md has the algorithm. The spec:",
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
        "@triton.jit",
        "def _all_but_last(p_a, x_a, p_b, x_b):",
        "    # a segment (earlier a, later b): (product of all, product of all but the last)",
        "    return p_a * p_b, p_a * x_b",
        "",
        "",
        "@triton.jit",
        "def _product(a, b):",
        "    return a * b",
        "",
        "",
    ]
    out += writer.states_kernel()
    out += ["", ""]
    out += writer.outputs_kernel()
    return wrap_source("\n".join(out) + "\n"), kernel_plan


class _Writer:
    def __init__(self, plan: ChunkPlan, layout: TileLayout, ns: Namespace, kp) -> None:
        self.plan, self.layout, self.ns, self.kp = plan, layout, ns, kp
        self.rec = plan.spec
        self.rows, self.cols = plan.rows, plan.cols
        self.BT = layout.block(TIME)
        self.BR = layout.block(self.rows)
        self.BC = layout.block(self.cols)
        self.size = {self.rows: "R", self.cols: "C"}
        self.ptr = {n: ns.name(("ptr", n), f"{n}_ptr") for n in (*kp.inputs, *kp.params)}
        self.out_ptr = {n: ns.name(("out", n), f"{n}_out_ptr") for n in kp.outputs}

    def _update_line(self) -> str:
        update = next(u for u in self.rec.updates if u.name == self.plan.state)
        return cite(self.rec, update.span)

    # ---- shared pieces ----
    def _signature(self, name: str, extra: list[str]) -> list[str]:
        args = [self.ptr[n] for n in (*self.kp.inputs, *self.kp.params)] + extra
        args += ["T", "H", "R", "C", "NC", "NSUB: tl.constexpr"]
        args += [f"{b}: tl.constexpr" for b in (self.BT, self.BR, self.BC)]
        args += ["DTYPE: tl.constexpr"]
        return ["@triton.jit", f"def {name}(", *[f"    {a}," for a in args], "):"]

    def _axes(self, row_block: str) -> list[str]:
        L = self.layout
        return [
            f"    {L.offsets(self.rows)} = {row_block} * {self.BR} + tl.arange(0, {self.BR})",
            f"    {L.mask(self.rows)} = {L.offsets(self.rows)} < R",
            f"    {L.offsets(self.cols)} = tl.arange(0, {self.BC})",
            f"    {L.mask(self.cols)} = {L.offsets(self.cols)} < C",
        ]

    def _params(self) -> tuple[list[str], dict[str, str]]:
        """Every param's tile (no time axis), loaded once: [H, *dims], contiguous."""
        lines, names = [], {}
        decls = {p.name: p.dims for p in self.rec.params}
        for name in self.kp.params:
            dims = decls.get(name, ())
            var = self.ns.name(("param", name), f"{name}_p")
            offset, mask = self._inner(dims, time=False)
            other = ", other=0.0" if mask else ""
            lines.append(
                f"    {var} = tl.load({self.ptr[name]} + i_h * {self._numel(dims)}{offset}"
                f"{mask}{other}).to(DTYPE)"
            )
            names[name] = var
        return lines, names

    def _numel(self, dims) -> str:
        return " * ".join(self.size[d] for d in dims) if dims else "1"

    def _inner(self, dims, time: bool) -> tuple[str, str]:
        """The offset within one step of a tensor with `dims` (row-major) and its mask."""
        L = self.layout
        offset = ""
        for i, d in enumerate(dims):
            stride = " * ".join(self.size[e] for e in dims[i + 1 :])
            offset += f" + {L.index(d)}" + (f" * {stride}" if stride else "")
        masks = ([f"{L.mask(TIME)}{L._expand(0)}"] if time else []) + [
            f"{L.mask(d)}{L._expand(L.axis(d))}" for d in dims
        ]
        return offset, (", mask=" + " & ".join(masks)) if masks else ""

    def _coefficients(
        self, exprs: dict[str, Expr | None], names: dict[str, str], flat: bool = True
    ) -> list[str]:
        """Lines that load this sub-block's inputs (at `o_T`) and compute `exprs`, each
        into the variable named by its key: a 2-D tile [BLOCK_T, rows or cols or 1]
        (`flat`), else a [BLOCK_T, BLOCK_rows, 1] one. Padded steps and lanes are made
        harmless by the caller. `names` gains the inputs and lets loaded and computed
        here, so a later call for the same sub-block reuses them."""
        L = self.layout
        emitter = TileEmitter(L, names, self.ns)
        wanted = {
            n.name for e in exprs.values() if e is not None for n in walk(e) if isinstance(n, Ref)
        }
        lets = []  # the lets these read, directly or through other lets, in order
        for let in reversed(self.plan.state_free_lets):
            if let.name in wanted and let.name not in names:
                wanted |= {n.name for n in walk(let.expr) if isinstance(n, Ref)}
                lets.insert(0, let)
        lines = []
        for i in self.rec.inputs:
            if i.name not in wanted or i.name in names:
                continue
            var = self.ns.fresh(f"{i.name}_")
            offset, mask = self._inner(i.dims, time=True)
            lines.append(
                f"    {var} = tl.load({self.ptr[i.name]} + ((i_b * T + {L.time_index()}) * H + i_h)"
                f" * {self._numel(i.dims)}{offset}{mask}, other=0.0).to(DTYPE)"
            )
            emitter.names[i.name] = var
        for let in lets:
            emitter.names[let.name] = emitter.emit(let.expr)
        values = {key: (emitter.emit(e) if e is not None else None) for key, e in exprs.items()}
        lines += [f"    {line}" for line in emitter.lines]
        for key, value in values.items():
            dims = exprs[key].dims if exprs[key] is not None else ()
            if flat:
                lines.append(f"    {key} = {self._as_2d(value, dims)}")
            else:
                lines.append(f"    {key} = {value} + tl.zeros([{self.BT}, {self.BR}, 1], DTYPE)")
        return lines

    def _as_2d(self, value: str | None, dims) -> str:
        """A [BT, (rows|cols|1), ...] tile of the layout as a 2-D [BT, n] tile."""
        if value is None:
            return f"tl.zeros([{self.BT}, 1], DTYPE)"
        axis = self.rows if self.rows in dims else (self.cols if self.cols in dims else None)
        width = self.BR if axis == self.rows else (self.BC if axis == self.cols else "1")
        shape3 = [
            self.BT,
            self.BR if axis == self.rows else "1",
            self.BC if axis == self.cols else "1",
        ]
        full = f"({value} + tl.zeros([{', '.join(shape3)}], DTYPE))"
        return f"tl.reshape({full}, [{self.BT}, {width}])"

    def _prelude(self, name: str, extra: list[str], doc: str, ids: list[str]):
        """A kernel's signature, docstring, program ids (`ids`: i_n first, i_r last),
        lanes and params: (lines, the params' names)."""
        lines = self._signature(name, extra) + [f'    """{doc}"""']
        meaning = {"i_n": "batch x head", "i_c": "chunk", "i_r": "block of rows"}
        lines += [f"    {v} = tl.program_id({k})  # {meaning[v]}" for k, v in enumerate(ids)]
        lines += ["    i_b = i_n // H", "    i_h = i_n % H", *self._axes("i_r")]
        params, names = self._params()
        return lines + params, names

    def _sub_block(
        self, start: str, names: dict[str, str], probes=(), comment: bool = False
    ) -> list[str]:
        """The sub-block of steps from `start`, in time order: d_t, e{m}_t, y{m}_t,
        z{m}_{j}_t (companions), p{o} (`probes`), with padded steps and lanes made the
        identity. `names` gains its inputs and lets, for the outputs to reuse."""
        L, plan = self.layout, self.plan
        lines = [
            f"    {L.offsets(TIME)} = {start} + tl.arange(0, {self.BT})",
            f"    {L.mask(TIME)} = {L.offsets(TIME)} < T",
        ]
        exprs: dict[str, Expr | None] = {"d_t": plan.decay}
        for m, w in enumerate(plan.writes):
            exprs[f"e{m}_t"] = w.direction
            exprs[f"y{m}_t"] = w.inject
            for j, comp in enumerate(plan.companions):
                exprs[f"z{m}_{j}_t"] = comp.scales[m]
        for o, p in enumerate(probes):
            exprs[f"p{o}"] = p.probe
        if comment:
            what = "writes y e^T and probes p" if probes else "writes y e^T"
            lines.append(f"    # decay d, {what} of {self._update_line()}")
        lines += self._coefficients(exprs, names)
        lines += self._identity_on_padding("_t")
        for o in range(len(probes)):
            lines.append(f"    p{o} = tl.where({L.mask(self.cols)}[None, :], p{o}, 0.0)")
        return lines

    def _carry(self) -> list[str]:
        """The state (and companions) carried over the sub-block: S <- S * prod_s d_s +
        sum_s y_s^T (e_s * prod_(k > s) d_k), products only."""
        lines = [
            "    total = tl.reduce(d_t, 0, _product, keep_dims=True)  # [1, cols or 1]",
            "    _, suffix = tl.associative_scan(",
            "        (tl.flip(d_t, 0), tl.full(d_t.shape, 1.0, DTYPE)), 0, _all_but_last",
            "    )",
            "    suffix = tl.flip(suffix, 0)  # prod_(k > s) d_k within the sub-block",
            "    S = S * total",
        ]
        J = len(self.plan.companions)
        lines += [f"    n{j} = n{j} * total" for j in range(J)]
        for m in range(len(self.plan.writes)):
            lines.append(
                f'    S += tl.dot(tl.trans(y{m}_t), e{m}_t * suffix, input_precision="ieee")'
                f"  # write {m}, decayed to the sub-block's end"
            )
            lines += [
                f"    n{j} += tl.sum(z{m}_{j}_t * e{m}_t * suffix, axis=0, keep_dims=True)"
                for j in range(J)
            ]
        return lines

    def _identity_on_padding(self, tag: str) -> list[str]:
        """Padded steps and lanes: decay 1, nothing written (NaN never reaches a real
        value through a padded one: selection, not multiplication)."""
        L = self.layout
        t, r, c = (
            f"{L.mask(TIME)}[:, None]",
            f"{L.mask(self.rows)}[None, :]",
            f"{L.mask(self.cols)}[None, :]",
        )
        lines = [
            f"    d{tag} = tl.where({t} & {c}, d{tag}, 1.0)"
            if self.plan.decay.dims
            else f"    d{tag} = tl.where({t}, d{tag}, 1.0)"
        ]
        for m in range(len(self.plan.writes)):
            lines.append(f"    e{m}{tag} = tl.where({t} & {c}, e{m}{tag}, 0.0)")
            lines.append(f"    y{m}{tag} = tl.where({t} & {r}, y{m}{tag}, 0.0)")
            for j in range(len(self.plan.companions)):
                lines.append(f"    z{m}_{j}{tag} = tl.where({t}, z{m}_{j}{tag}, 0.0)")
        return lines

    def _within(self, M: int, J: int, probes, row_of) -> list[str]:
        """Lines adding what each step's writes give the outputs of its own sub-block.

        A scalar decay: the [BLOCK_T, BLOCK_T] table rho(t, s), a cumulative product down
        the columns of a masked tile, times P E^T (one dot), then one dot with Y. A decay
        over columns: per source step s, a masked cumulative product [BLOCK_T, cols]."""
        lines = []
        if not self.plan.decay.dims:
            lines += [
                "    # sources in this sub-block: rho(t, s) = prod_(s < k <= t) d_k, a table",
                "    rho = tl.cumprod(tl.where(steps[:, None] > steps[None, :], d_t, 1.0), axis=0)",
                "    rho = tl.where(steps[:, None] >= steps[None, :], rho, 0.0)",
            ]
            for m in range(M):
                for o in range(len(probes)):
                    lines.append(
                        f'    a = tl.dot(p{o}, tl.trans(e{m}_t), input_precision="ieee") * rho'
                    )
                    if row_of[o] is None:
                        lines.append(f'    acc{o} += tl.dot(a, y{m}_t, input_precision="ieee")')
                    else:
                        z = f"tl.reshape(z{m}_{row_of[o]}_t, [1, {self.BT}])"
                        lines.append(f"    acc{o} += tl.sum(a * {z}, axis=1)")
            return lines
        lines += [
            "    # sources in this sub-block: rho(t, s) as a masked cumulative product per s",
            f"    for s in tl.range(0, {self.BT}, loop_unroll_factor=1):  # kept a loop: registers",
            "        rho = tl.cumprod(tl.where(steps[:, None] > s, d_t, 1.0), axis=0)",
        ]
        for m in range(M):
            lines += [
                f"        e_row = tl.sum(tl.where(steps[:, None] == s, e{m}_t, 0.0), axis=0)",
                f"        y_row = tl.sum(tl.where(steps[:, None] == s, y{m}_t, 0.0), axis=0)",
            ]
            for j in range(J):
                lines.append(
                    f"        z_row{j} = tl.sum(tl.where(steps[:, None] == s, z{m}_{j}_t, 0.0))"
                )
            for o in range(len(probes)):
                lines += [
                    f"        column = tl.sum(p{o} * rho * e_row[None, :], axis=1)",
                    "        column = tl.where(steps >= s, column, 0.0)",
                    f"        acc{o} += column[:, None] * y_row[None, :]"
                    if row_of[o] is None
                    else f"        acc{o} += column * z_row{row_of[o]}",
                ]
        return lines

    def _state_index(self) -> tuple[str, str]:
        L = self.layout
        return (
            f"{L.offsets(self.rows)}[:, None] * C + {L.offsets(self.cols)}[None, :]",
            f"{L.mask(self.rows)}[:, None] & {L.mask(self.cols)}[None, :]",
        )

    # ---- the kernels ----
    def states_kernel(self) -> list[str]:
        plan = self.plan
        J = len(plan.companions)
        companions = ["N0_ptr", "entering_n_ptr", "final_n_ptr"] if J else []
        lines, names = self._prelude(
            "chunk_states",
            ["S0_ptr", "entering_ptr", "final_ptr", *companions],
            "The state entering every chunk (entering[n, c]) and the final one.",
            ["i_n", "i_r"],
        )
        index, mask = self._state_index()
        cols = f"{self.layout.offsets(self.cols)}[None, :]"
        col_mask = f"{self.layout.mask(self.cols)}[None, :]"
        lines.append(
            f"    S = tl.load(S0_ptr + i_n * R * C + {index}, mask={mask}, other=0.0).to(DTYPE)"
        )
        for j, c in enumerate(plan.companions):
            lines.append(
                f"    n{j} = tl.load(N0_ptr + (i_n * {J} + {j}) * C + {cols}, "
                f"mask={col_mask}, other=0.0).to(DTYPE)"
                f"  # companion {c.state}: one more row of {plan.state}"
            )
        lines += [
            f"    for i_g in range(0, NC * NSUB):  # sub-blocks of {self.BT} steps, in order",
            "        if i_g % NSUB == 0:  # a chunk starts: the state its outputs start from",
            "            chunk_at = (i_n * NC + i_g // NSUB) * R * C",
            f"            tl.store(entering_ptr + chunk_at + {index}, S, mask={mask})",
        ]
        if J:
            lines.append("            if i_r == 0:  # the companions: one program stores them")
        for j in range(J):
            lines.append(
                f"                tl.store(entering_n_ptr + ((i_n * NC + i_g // NSUB) * {J} + {j})"
                f" * C + {cols}, n{j}, mask={col_mask})"
            )
        body = self._sub_block(f"i_g * {self.BT}", dict(names), comment=True) + self._carry()
        lines += [f"    {line}" for line in body]
        lines.append(f"    tl.store(final_ptr + i_n * R * C + {index}, S, mask={mask})")
        if J:
            lines.append("    if i_r == 0:")
        for j in range(J):
            lines.append(
                f"        tl.store(final_n_ptr + (i_n * {J} + {j}) * C + {cols}, n{j}, "
                f"mask={col_mask})"
            )
        return lines

    def outputs_kernel(self) -> list[str]:
        """One program per (batch x head, chunk, block of rows), its sub-blocks in turn:
        each output reads the state at its sub-block's start (the state entering the
        chunk carried through the earlier sub-blocks, as in chunk_states) and the
        sources within its sub-block. The entering state and every input are read
        once; only the running state stays live between sub-blocks."""
        plan, L = self.plan, self.layout
        J = len(plan.companions)
        of = {comp.state: j for j, comp in enumerate(plan.companions)}
        probes = [p for r in plan.readouts for p in r.probes]
        row_of = [of.get(p.companion) for p in probes]  # None: a probe of S's rows
        M = len(plan.writes)
        outs = list(self.out_ptr.values())
        companions = ["entering_n_ptr"] if J else []
        lines, names = self._prelude(
            "chunk_outputs",
            ["entering_ptr", *companions, *outs],
            "The outputs of one chunk (NSUB sub-blocks of BLOCK_T steps).",
            ["i_n", "i_c", "i_r"],
        )
        index, mask = self._state_index()
        cols = f"{L.offsets(self.cols)}[None, :]"
        c = f"{L.mask(self.cols)}[None, :]"
        lines += [
            "    # the state entering the chunk, carried to each sub-block's start below",
            "    chunk_at = (i_n * NC + i_c) * R * C",
            f"    S = tl.load(entering_ptr + chunk_at + {index}, mask={mask}, other=0.0)",
        ]
        for j in range(J):
            lines.append(
                f"    n{j} = tl.load(entering_n_ptr + ((i_n * NC + i_c) * {J} + {j}) * C + {cols}, "
                f"mask={c}, other=0.0)"
            )
        lines += [
            f"    steps = tl.arange(0, {self.BT})",
            "    for i_i in range(0, NSUB):  # the chunk's sub-blocks, in order",
        ]
        here = dict(names)
        body = self._sub_block(f"(i_c * NSUB + i_i) * {self.BT}", here, probes, comment=True)
        for o in range(len(probes)):
            width = f"[{self.BT}, {self.BR}]" if row_of[o] is None else f"[{self.BT}]"
            body.append(f"    acc{o} = tl.zeros({width}, DTYPE)")
        body += [
            "    prefix = tl.cumprod(d_t, axis=0)  # prod_(start <= k <= t) d_k",
            *self._within(M, J, probes, row_of),
        ]
        body.append("    # the state at the sub-block's start, decayed to t by prefix(t)")
        for o in range(len(probes)):
            if row_of[o] is None:
                body.append(
                    f'    acc{o} += tl.dot(p{o} * prefix, tl.trans(S), input_precision="ieee")'
                )
            else:
                body.append(f"    acc{o} += tl.sum(p{o} * prefix * n{row_of[o]}, axis=1)")
        rows_at = f"{L.offsets(self.rows)}[None, :, None]"
        out_offset = f"((i_b * T + {L.offsets(TIME)}[:, None, None]) * H + i_h) * R + {rows_at}"
        out_mask = f"{L.mask(TIME)}[:, None, None] & {L.mask(self.rows)}[None, :, None]"
        o = 0
        for r in plan.readouts:
            value = self.ns.unique(f"{r.name}_value")
            for p in r.probes:
                shape = f"[{self.BT}, {self.BR}, 1]" if row_of[o] is None else f"[{self.BT}, 1, 1]"
                var = self.ns.unique(p.name.lstrip("_"))
                body.append(f"    {var} = tl.reshape(acc{o}, {shape})")
                here[p.name] = var
                o += 1
            out = next(x for x in self.rec.outputs if x.name == r.name)
            body.append(f"    # {cite(self.rec, out.span)}")
            if r.expr is None:
                body.append(f"    {value} = tl.zeros([{self.BT}, {self.BR}, 1], DTYPE)")
            else:
                body += self._coefficients({value: r.expr}, here, flat=False)
            body.append(
                f"    tl.store({self.out_ptr[r.name]} + {out_offset}, {value}, mask={out_mask})"
            )
        body += ["    # the state carried to the next sub-block's start", *self._carry()]
        lines += [f"    {line}" for line in body]
        return lines

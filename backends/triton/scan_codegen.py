"""Generate the Triton forward kernel of a diagonal or MinMax recurrence.

Stage: backend (triton). Input: the spec's IR and its canonical form (from
`recc.analysis`); output: the source text of a Python module holding a
`@triton.jit` kernel and a launcher. Nothing here re-analyses the spec.

The kernel (one program per batch x head and block of channels):

    load the initial state (a tile without a time axis)
    for each block of BLOCK_T steps:
        load this block's inputs once                       (global -> registers)
        compute the lets, a_t and b_t from them             (never stored)
        (A, B) = tl.associative_scan over time with the class's combine
        states = A (x) carried state + B                    (every step of the block)
        outputs = readouts of the states, stored            (registers -> global)
        carried state = the block's last row
    store the final state if asked

so global traffic is the inputs once, the outputs once and the final state.
"""

from __future__ import annotations

from dataclasses import dataclass

from recc.analysis.forms import Analysis, DiagonalBlock, DiagonalForm, MinMaxForm
from recc.analysis.rewrite import state_dependent_lets
from recc.backends.triton.tile import (
    HELPERS,
    TileEmitter,
    TileLayout,
    contracted_dims,
    literal,
    unsupported_reason,
)
from recc.ir.nodes import Expr, Recurrence, Ref, walk

INF = float("inf")


@dataclass(frozen=True)
class ScanKernelPlan:
    """What the launcher needs to know about a generated kernel."""

    kernel: str  # the @triton.jit function's name
    layout: TileLayout
    blocked: str | None  # the dim split across programs (never contracted)
    inputs: tuple[tuple[str, tuple[str, ...]], ...]
    params: tuple[tuple[str, tuple[str, ...]], ...]
    states: tuple[tuple[str, tuple[str, ...]], ...]
    outputs: tuple[tuple[str, tuple[str, ...]], ...]


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
    return ScanKernelPlan(
        kernel=f"{rec.name}_scan_fwd",
        layout=layout,
        blocked=blocked,
        inputs=tuple((i.name, i.dims) for i in rec.inputs if i.name in used),
        params=tuple((p.name, p.dims) for p in rec.params if p.name in used),
        states=tuple((s.name, s.dims) for s in rec.states),
        outputs=tuple((o.name, o.expr.dims) for o in rec.outputs),
    )


def _coefficients(analysis: Analysis) -> list[Expr | None]:
    form = analysis.form
    if isinstance(form, DiagonalForm):
        return [c for b in form.blocks for row in b.coupling for c in row] + [
            c for b in form.blocks for c in b.inject
        ]
    assert isinstance(form, MinMaxForm)
    return [c for pair in form.coefficients.values() for c in pair]


# ---- code generation ---------------------------------------------------------


def _combine_source(name: str, analysis: Analysis, block: DiagonalBlock | None) -> list[str]:
    """The associative combine: the map of an earlier step, then a later one."""
    if block is not None:
        k = block.size
        a1 = [[f"a1_{i}{j}" for j in range(k)] for i in range(k)]
        a2 = [[f"a2_{i}{j}" for j in range(k)] for i in range(k)]
        b1 = [f"b1_{i}" for i in range(k)]
        b2 = [f"b2_{i}" for i in range(k)]
        params = [x for row in a1 for x in row] + b1 + [x for row in a2 for x in row] + b2
        results = [
            " + ".join(f"{a2[i][m]} * {a1[m][j]}" for m in range(k))
            for i in range(k)
            for j in range(k)
        ] + [" + ".join([f"{a2[i][m]} * {b1[m]}" for m in range(k)] + [b2[i]]) for i in range(k)]
        doc = "(A2 A1, A2 b1 + b2): h -> A1 h + b1, then h -> A2 h + b2"
    elif analysis.semiring == "max-min":
        params = ["a1", "b1", "a2", "b2"]
        results = ["tl.minimum(a1, a2)", "tl.maximum(tl.minimum(a2, b1), b2)"]
        doc = "max(min(h, a1), b1), then max(min(h, a2), b2)"
    else:
        params = ["a1", "b1", "a2", "b2"]
        results = ["a1 + a2", "tl.maximum(b1 + a2, b2)"]
        doc = "max(h + a1, b1), then max(h + a2, b2)"
    lines = ["@triton.jit", f"def {name}({', '.join(params)}):", f"    # {doc}"]
    lines.append("    return (")
    lines += [f"        {r}," for r in results]
    lines.append("    )")
    return lines


def _cite(rec: Recurrence, span) -> str:
    """`spec line N: <the line>`, for comments in generated code."""
    if span is None:
        return "(no source line)"
    return f"spec line {span.line}: {rec.line(span)}"


def generate_scan_module(rec: Recurrence, analysis: Analysis) -> tuple[str, ScanKernelPlan]:
    """The source of a module with the forward scan kernel and its launcher."""
    plan = plan_scan_kernel(rec, analysis)
    layout = plan.layout
    form = analysis.form
    out: list[str] = []
    w = out.append
    w(f'"""Triton scan kernel for recurrence `{rec.name}` ({rec.filename}), generated by recc.')
    w("")
    w(f"Class: {analysis.kind}" + (f" ({analysis.semiring})" if analysis.semiring else "") + ".")
    w(f"Tile axes: (time, {', '.join(layout.dims)}); programs split dim {plan.blocked}.")
    w("DTYPE is the compute type: fp32, or fp64 for fp64 inputs.")
    w("The spec:")
    w("")
    for line in rec.source.strip().splitlines():
        w(f"    {line}")
    w('"""')
    w("")
    w("import torch")
    w("import triton")
    w("import triton.language as tl")
    w("")
    w("")
    w(HELPERS)
    groups = form.blocks if isinstance(form, DiagonalForm) else [s.name for s in rec.states]
    for g, group in enumerate(groups):
        block = group if isinstance(form, DiagonalForm) else None
        out += _combine_source(f"_combine_{g}", analysis, block)
        w("")
        w("")

    # -- the kernel signature --
    args: list[str] = []
    args += [f"{n}_ptr" for n, _ in plan.inputs]
    args += [f"{n}_ptr" for n, _ in plan.params]
    args += [f"{n}_init_ptr" for n, _ in plan.states]
    args += [f"{n}_out_ptr" for n, _ in plan.outputs]
    args += [f"{n}_final_ptr" for n, _ in plan.states]
    args += ["T", "H"] + [f"size_{d}" for d in layout.dims]
    strides: dict[str, list[str]] = {}
    for n, dims in plan.inputs:
        strides[n] = [f"s_{n}_b", f"s_{n}_t", f"s_{n}_h"] + [f"s_{n}_{d}" for d in dims]
    for n, dims in plan.params:
        strides[n] = [f"s_{n}_h"] + [f"s_{n}_{d}" for d in dims]
    for n, dims in plan.states:
        strides[f"{n}_init"] = [f"s_{n}_init_b", f"s_{n}_init_h"] + [
            f"s_{n}_init_{d}" for d in dims
        ]
        strides[f"{n}_final"] = [f"s_{n}_final_b", f"s_{n}_final_h"] + [
            f"s_{n}_final_{d}" for d in dims
        ]
    for n, dims in plan.outputs:
        strides[f"{n}_out"] = [f"s_{n}_out_b", f"s_{n}_out_t", f"s_{n}_out_h"] + [
            f"s_{n}_out_{d}" for d in dims
        ]
    for group in strides.values():
        args += group
    args += ["BLOCK_T: tl.constexpr"] + [f"BLOCK_{d}: tl.constexpr" for d in layout.dims]
    args += ["STORE_FINAL: tl.constexpr", "DTYPE: tl.constexpr"]
    w("@triton.jit")
    w(f"def {plan.kernel}(")
    for a in args:
        w(f"    {a},")
    w("):")
    body: list[str] = []
    b = body.append
    b("i_bh = tl.program_id(0)")
    b("i_b = i_bh // H")
    b("i_h = i_bh % H")
    for d in layout.dims:
        start = f"tl.program_id(1) * BLOCK_{d} + " if d == plan.blocked else ""
        b(f"o_{d} = {start}tl.arange(0, BLOCK_{d})")
        b(f"m_{d} = {layout.index(d)} < size_{d}")

    def offset(name: str, dims, time: bool, batch: bool = True) -> str:
        s = strides[name]
        parts = []
        if batch:
            parts.append(f"i_b * {s[0]}")
        if time:
            parts.append(f"{layout.time_index()} * {s[1]}")
        head = s[2] if (batch and time) else (s[1] if batch else s[0])
        parts.append(f"i_h * {head}")
        first_dim = len(s) - len(dims)
        parts += [f"{layout.index(d)} * {s[first_dim + k]}" for k, d in enumerate(dims)]
        return " + ".join(parts)

    def mask(dims, time: bool) -> str:
        parts = (["m_T"] if time else []) + [f"m_{d}" for d in dims]
        return " & ".join(parts) if parts else "None"

    def load(pointer: str, m: str) -> str:
        if m == "None":
            return f"tl.load({pointer}).to(DTYPE)"
        return f"tl.load({pointer}, mask={m}, other=0.0).to(DTYPE)"

    names: dict[str, str] = {}
    b("# params: loaded once")
    for n, dims in plan.params:
        pointer = f"{n}_ptr + " + offset(n, dims, time=False, batch=False)
        b(f"{n} = {load(pointer, mask(dims, False))}")
        names[n] = n
    b("# initial states")
    state_var = {}
    for n, dims in plan.states:
        var = f"{n}_carry"
        state_var[n] = var
        pointer = f"{n}_init_ptr + {offset(n + '_init', dims, time=False)}"
        b(f"{var} = {load(pointer, mask(dims, False))}")
    b("for t0 in range(0, T, BLOCK_T):")
    loop: list[str] = []
    lb = loop.append
    lb("o_T = t0 + tl.arange(0, BLOCK_T)")
    lb(f"m_T = {layout.time_index()} < T")
    lb(f"is_last = {layout.time_index()} == t0 + BLOCK_T - 1")
    for n, dims in plan.inputs:
        lb(f"{n} = {load(f'{n}_ptr + ' + offset(n, dims, time=True), mask(dims, True))}")
        names[n] = n
    emitter = TileEmitter(layout, names)
    dependent = state_dependent_lets(rec, {s.name for s in rec.states})
    for let in rec.lets:
        if let.name in dependent:
            continue
        value = emitter.emit(let.expr)
        emitter.lines.append(f"{let.name} = {value}  # {_cite(rec, let.span)}")
        names[let.name] = let.name
    loop += emitter.lines
    emitter.lines = []

    def full(expr: Expr | None, dims, absent: float, identity: float) -> str:
        shape = layout.shape(dims)
        if expr is None:
            value = f"tl.full({shape}, {literal(absent)}, DTYPE)"
        else:
            v = emitter.emit(expr)
            value = f"({v}) + tl.zeros({shape}, DTYPE)"
        return f"tl.where(m_T, {value}, {literal(identity)})"

    for g, group in enumerate(groups):
        if isinstance(form, DiagonalForm):
            k = group.size
            dims = rec.state(group.states[0]).dims
            coef_names = []
            for i in range(k):
                for j in range(k):
                    name = f"a{g}_{i}{j}"
                    coef = full(group.coupling[i][j], dims, 0.0, 1.0 if i == j else 0.0)
                    emitter.lines.append(f"{name} = {coef}")
                    coef_names.append(name)
            for i in range(k):
                name = f"b{g}_{i}"
                emitter.lines.append(f"{name} = {full(group.inject[i], dims, 0.0, 0.0)}")
                coef_names.append(name)
            scanned = [f"S{g}_{i}{j}" for i in range(k) for j in range(k)]
            scanned += [f"S{g}_{i}" for i in range(k)]
            spans = [u.span for u in rec.updates if u.name in group.states]
            emitter.lines.append(f"# scan of {', '.join(group.states)}")
            emitter.lines += [f"#   {_cite(rec, span)}" for span in spans]
            emitter.lines.append(
                f"{', '.join(scanned)} = tl.associative_scan("
                f"({', '.join(coef_names)},), 0, _combine_{g})"
            )
            for i, target in enumerate(group.states):
                terms = [f"S{g}_{i}{j} * {state_var[s]}" for j, s in enumerate(group.states)]
                emitter.lines.append(f"{target}_new = {' + '.join(terms)} + S{g}_{i}")
        else:
            s = rec.state(group)
            a_expr, b_expr = form.coefficients[group]
            max_min = form.semiring == "max-min"
            identity_a = INF if max_min else 0.0
            a_code = full(a_expr, s.dims, identity_a, identity_a)
            emitter.lines.append(f"a{g} = {a_code}")
            emitter.lines.append(f"b{g} = {full(b_expr, s.dims, -INF, -INF)}")
            span = next(u.span for u in rec.updates if u.name == group)
            emitter.lines.append(f"# scan of {group}: {_cite(rec, span)}")
            emitter.lines.append(f"A{g}, B{g} = tl.associative_scan((a{g}, b{g}), 0, _combine_{g})")
            inner = (
                f"tl.minimum({state_var[group]}, A{g})" if max_min else f"{state_var[group]} + A{g}"
            )
            emitter.lines.append(f"{group}_new = tl.maximum({inner}, B{g})")
    for n, _ in plan.states:
        names[n] = f"{n}_new"
    for o in rec.outputs:
        value = emitter.emit(o.expr)
        dims = o.expr.dims
        emitter.lines.append(f"# {_cite(rec, o.span)}")
        emitter.lines.append(
            f"tl.store({o.name}_out_ptr + {offset(o.name + '_out', dims, time=True)}, "
            f"({value} + tl.zeros({layout.shape(dims)}, DTYPE))"
            f".to({o.name}_out_ptr.dtype.element_ty), "
            f"mask={mask(dims, True)})"
        )
    emitter.lines.append("# carry the block's last row (padded steps were the identity)")
    for n, _ in plan.states:
        emitter.lines.append(
            f"{state_var[n]} = tl.sum(tl.where(is_last, {n}_new, 0.0), axis=0, keep_dims=True)"
        )
    loop += emitter.lines
    body += ["    " + line for line in loop]
    b("if STORE_FINAL:")
    for n, dims in plan.states:
        b(
            f"    tl.store({n}_final_ptr + {offset(n + '_final', dims, time=False)}, "
            f"{state_var[n]}, mask={mask(dims, False)})"
        )
    out += ["    " + line for line in body]
    out.append("")
    return "\n".join(out) + "\n", plan

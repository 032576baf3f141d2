"""The step loop's backward as a generated reverse loop, instead of autograd
through T steps of small ops.

Stage: backend (torch). The forward runs the printed step (`sequential.py`)
without an autograd graph and keeps each step's old states; the backward runs
from the last step to the first a printed function of the reverse step
(`recc.lowering.reverse`: the step's vector-Jacobian product as IR),

  reverse(*inputs at t, *params, *dims as values, *old states at t,
          *d_out at t (seeded outputs), *d_new (seeded states))
      -> (d_old states, d_inputs at t, d_params)

with the step's lets recomputed at the old states and every subexpression
shared by several cotangents computed once (a local). A param's cotangent
whose root is an outer product `outer(u, v)` (a recurrent weight's) comes back
as its factors, kept for every step and contracted once after the loop: one
matrix multiply over B*T rows instead of a [B, M, K] product per step.
"""

from __future__ import annotations

from collections import Counter

import torch

from recc.backends.names import Namespace
from recc.backends.torch.printer import MODULE_NAMES, Unprintable, _cite, _Printed
from recc.backends.torch.sequential import (
    SequentialLoop,
    Stacked,
    _spelling,
    _StepPrinter,
    matvec,
    print_stacked,
)
from recc.ir import ties
from recc.ir.nodes import Apply, Const, Expr, embed
from recc.ir.ops import broadcast_like
from recc.lowering.reverse import ReverseStep, reverse_step, unread
from recc.signature import Bound

# The derivative rules' internal ops, printed as the op table computes them.
_INTERNAL = {
    "gt": "({0} > {1})",
    "le": "({0} <= {1})",
    "max_picks_first": "max_picks_first({0}, {1})",
    "min_picks_first": "min_picks_first({0}, {1})",
    "select": "torch.where({0}, {1}, {2})",
    "broadcast_like": "broadcast_like({0}, {1})",
}
_MODULE = (*MODULE_NAMES, "matvec", "max_picks_first", "min_picks_first", "broadcast_like")
_SCOPE = {
    "torch": torch,
    "maximum": ties.maximum,
    "minimum": ties.minimum,
    "max_picks_first": ties.max_picks_first,
    "min_picks_first": ties.min_picks_first,
    "broadcast_like": broadcast_like,
    "matvec": matvec,
}


class _ReversePrinter(_StepPrinter):
    """The step printer, with the internal ops and `sum_to`."""

    def expr(self, expr: Expr) -> _Printed:
        if expr in self.nodes:
            return _Printed(self.nodes[expr], 4)
        if isinstance(expr, Apply) and expr.op == "sum_to":  # over the dims the node lacks
            (x,) = expr.args
            keep = embed(expr.dims, x.dims)
            lacking = [i - len(x.dims) for i in range(len(x.dims)) if i not in keep]
            text = self.atom(x)
            if not lacking:
                return _Printed(text, 4)
            return _Printed(f"{text}.sum(dim=({', '.join(map(str, lacking))},))", 4)
        if isinstance(expr, Apply) and expr.op in _INTERNAL:
            args = []
            for a in expr.args:
                printed = self.tensor_const(a.value) if isinstance(a, Const) else self.expr(a)
                if a.dims != expr.dims:  # name-based broadcasting, as everywhere
                    printed = self.aligned(printed, a.dims, expr.dims)
                args.append(printed.text)
            return _Printed(_INTERNAL[expr.op].format(*args), 4)
        if isinstance(expr, Apply) and expr.op == "sum_steps":  # pragma: no cover
            raise Unprintable("sum_steps in a reverse step (its evaluation covers one step)")
        return super().expr(expr)


def _outer(expr: Expr) -> tuple[Expr, Expr] | None:
    """The factors of a param cotangent that is an outer product of its own dims
    (a `sum_to` that sums nothing aside)."""
    node = expr
    while isinstance(node, Apply) and node.op == "sum_to":
        node = node.args[0]
    if isinstance(node, Apply) and node.op == "outer" and node.dims == expr.dims:
        return node.args[0], node.args[1]
    return None


def print_reverse(
    rs: ReverseStep, stacked: tuple[Stacked, ...] = ()
) -> tuple[str, list[str], dict[str, str]]:
    """(source of `def reverse(...)`, its parameters' spec names in order, and per
    param of the step how its cotangent comes back: "value" or "outer"). `stacked`:
    the loop's stacked products (`sequential._stacked`), whose stacked weights follow
    the dims read as values among the parameters."""
    step = rs.step
    outputs, states = rs.seeded
    module = Namespace(_MODULE)
    ns = module.child()
    params = [
        *(i.name for i in step.inputs),
        *(p.name for p in step.params),
        *step.dim_values,
        *(g.name for g in stacked),
        *(s.name for s in step.states),
        *(rs.d_out[o.name] for o in step.outputs if o.name in outputs),
        *(rs.d_new[s.name] for s in step.states if s.name in states),
    ]
    names = {n: ns.name(("arg", n), _spelling(n)) for n in params}
    lines = [
        f"def reverse({', '.join(names[n] for n in params)}):",
        f'    """One step of `{step.name}` backwards: the cotangents of its old states, '
        'inputs and params."""',
    ]
    nodes: dict[Expr, str] = {}
    lines += print_stacked(stacked, names, ns, nodes)
    like = names[step.inputs[0].name] if step.inputs else names[step.states[0].name]
    printer = _ReversePrinter(names, like, nodes)
    for let in step.lets:  # recomputed at the old states
        local = ns.name(("let", let.name), let.name)
        lines += [f"    {_cite(step, let.span)}", f"    {local} = {printer.top(let.expr)}"]
        names[let.name] = local
        nodes.setdefault(let.expr, local)
    kinds: dict[str, str] = {}
    roots: list[Expr] = [*rs.old.values(), *rs.inputs.values()]
    for p, e in rs.params.items():
        factors = _outer(e)
        kinds[p] = "outer" if factors else "value"
        roots += list(factors) if factors else [e]
    lines.append("    # the cotangents; a subexpression several share, once")
    for node in _shared(roots):
        if node not in nodes:
            local = ns.fresh("_s")
            lines.append(f"    {local} = {printer.top(node)}")
            nodes[node] = local

    def value(e: Expr | None) -> str:
        return "None" if e is None else printer.top(e)

    old = [value(rs.old.get(s.name)) for s in step.states]
    inputs = [value(rs.inputs.get(i.name)) for i in step.inputs]
    param_values = []
    for p in step.params:
        e = rs.params.get(p.name)
        factors = _outer(e) if e is not None else None
        param_values.append(f"({value(factors[0])}, {value(factors[1])})" if factors else value(e))
    lines.append(f"    d_old = ({''.join(v + ', ' for v in old)})")
    lines.append(f"    d_inputs = ({''.join(v + ', ' for v in inputs)})")
    lines.append(f"    d_params = ({''.join(v + ', ' for v in param_values)})")
    lines.append("    return d_old, d_inputs, d_params")
    return "\n".join(lines), params, kinds


def _shared(roots: list[Expr]) -> list[Expr]:
    """The Apply nodes reached from more than one place, children before parents."""
    counts: Counter = Counter()

    def count(e: Expr) -> None:
        counts[e] += 1
        if counts[e] == 1 and isinstance(e, Apply):
            for a in e.args:
                count(a)

    for r in roots:
        count(r)
    order: list[Expr] = []
    seen: set = set()

    def visit(e: Expr) -> None:
        if e in seen or not isinstance(e, Apply):
            return
        seen.add(e)
        for a in e.args:
            visit(a)
        if counts[e] > 1:
            order.append(e)

    for r in roots:
        visit(r)
    return order


def reverse_function(rs: ReverseStep, stacked: tuple[Stacked, ...] = ()):
    """`print_reverse` executed: (the function, its parameters, param kinds, source)."""
    source, params, kinds = print_reverse(rs, stacked)
    scope = dict(_SCOPE)
    exec(compile(source, f"<reverse step of {rs.step.name}>", "exec"), scope)  # noqa: S102
    return scope["reverse"], params, kinds, source


class ReverseLoop:
    """A `SequentialLoop` run forward without a graph and backward by the printed
    reverse steps (one per set of seeds a call needs, printed on first use)."""

    def __init__(self, loop: SequentialLoop) -> None:
        self.loop = loop
        self.plan = loop.plan
        self.unread = unread(loop.plan)
        self._functions: dict = {}

    def function(self, outputs: frozenset[str], states: frozenset[str]):
        key = (outputs, states)
        if key not in self._functions:
            step = reverse_step(self.plan, outputs, states)
            self._functions[key] = reverse_function(step, self.loop.stacked)
        return self._functions[key]

    def __call__(self, bound: Bound):
        step = self.plan.step
        env = self.loop.hoist(bound)  # with autograd's graph: the hoisting's backward
        inputs = [env[i.name] for i in step.inputs]
        params = [env[p.name] for p in step.params]
        starts = [bound.initial_state[s.name] for s in step.states]
        results = _Loop.apply(self, bound, len(inputs), len(params), *inputs, *params, *starts)
        n_out = len(step.outputs)
        outputs = {o.name: v.to(bound.out_dtype) for o, v in zip(step.outputs, results[:n_out])}
        finals = {s.name: v for s, v in zip(step.states, results[n_out:])}
        return outputs, finals


class _Loop(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rev: ReverseLoop, bound: Bound, n_inputs: int, n_params: int, *tensors):
        step = rev.plan.step
        inputs, params = tensors[:n_inputs], tensors[n_inputs : n_inputs + n_params]
        env = {i.name: v for i, v in zip(step.inputs, inputs)}
        env.update({p.name: v for p, v in zip(step.params, params)})
        env.update({d: bound.params[d] for d in step.dim_values})
        olds: list[list[torch.Tensor]] = [[] for _ in step.states]
        outs: list[list[torch.Tensor]] = [[] for _ in step.outputs]
        states = [bound.initial_state[s.name] for s in step.states]
        with torch.no_grad():
            for new, out in rev.loop._steps(bound, env):
                for kept, value in zip(olds, states):
                    kept.append(value)
                for kept, value in zip(outs, out):
                    kept.append(value)
                states = new
        full = [
            (bound.B, *bound.batch_heads, *bound.shape_of(dims))
            for dims in (*(o.expr.dims for o in step.outputs), *(s.dims for s in step.states))
        ]
        outputs = [
            torch.stack([v.expand(shape) for v in kept], dim=1) for kept, shape in zip(outs, full)
        ]
        finals = [v.expand(shape) for v, shape in zip(states, full[len(outs) :])]
        ctx.rev, ctx.bound, ctx.n_inputs, ctx.n_params = rev, bound, n_inputs, n_params
        ctx.set_materialize_grads(False)  # an unread result's cotangent stays None
        ctx.olds = olds
        ctx.stacked = [  # the stacked weights, as the loop stacks them
            torch.cat([env[w] for w in g.weights], dim=-2) for g in rev.loop.stacked
        ]
        ctx.save_for_backward(*inputs, *params)
        return (*outputs, *finals)

    @staticmethod
    def backward(ctx, *grads):
        rev, bound = ctx.rev, ctx.bound
        step = rev.plan.step
        saved = ctx.saved_tensors
        inputs, params = saved[: ctx.n_inputs], saved[ctx.n_inputs :]
        n_out = len(step.outputs)
        d_outs, d_finals = grads[:n_out], grads[n_out:]
        seeded_outputs = frozenset(o.name for o, g in zip(step.outputs, d_outs) if g is not None)
        read = [s.name for s in step.states if s.name not in rev.unread]
        last_states = frozenset(s.name for s, g in zip(step.states, d_finals) if g is not None)
        dim_values = [bound.params[d] for d in step.dim_values]
        d_inputs: list[list] = [[] for _ in step.inputs]
        d_params: list[list] = [[] for _ in step.params]
        d_new = {s.name: g for s, g in zip(step.states, d_finals) if g is not None}
        for t in range(bound.T - 1, -1, -1):
            # the states whose new value a cotangent reached (none: no seed, as
            # autograd's None; a state nothing reads, at the last step alone)
            states = last_states if t == bound.T - 1 else frozenset(n for n in read if n in d_new)
            fn, names, kinds, _ = rev.function(seeded_outputs, states)
            args = [x[:, t] for x in inputs]
            args += [*params, *dim_values, *ctx.stacked, *(kept[t] for kept in ctx.olds)]
            args += [g[:, t] for o, g in zip(step.outputs, d_outs) if o.name in seeded_outputs]
            args += [d_new[s.name] for s in step.states if s.name in states]
            d_old, d_in, d_par = fn(*args)
            d_new = {s.name: g for s, g in zip(step.states, d_old) if g is not None}
            for kept, g in zip(d_inputs, d_in):
                kept.append(g)
            for kept, g in zip(d_params, d_par):
                kept.append(g)
        result_inputs = [_stacked(kept[::-1], x) for kept, x in zip(d_inputs, inputs)]
        result_params = [_summed(kept, p) for kept, p in zip(d_params, params)]
        d_start = [d_new.get(s.name) for s in step.states]
        starts = [_summed([g], bound.initial_state[s.name]) if g is not None else None
                  for s, g in zip(step.states, d_start)]  # fmt: skip
        return (None, None, None, None, *result_inputs, *result_params, *starts)


def _stacked(per_step: list, like: torch.Tensor) -> torch.Tensor | None:
    """[B, T, ...] from each step's cotangent (None where none reached it)."""
    if all(g is None for g in per_step):
        return None
    slice_shape = (like.shape[0], *like.shape[2:])
    full = [
        torch.zeros(slice_shape, dtype=like.dtype, device=like.device)
        if g is None
        else torch.broadcast_to(g, slice_shape)
        for g in per_step
    ]
    return torch.stack(full, dim=1)


def _summed(per_step: list, like: torch.Tensor) -> torch.Tensor | None:
    """A param's (or start's) cotangent: the steps' contributions summed over the steps
    and the leading axes the param lacks; an outer product's factors contracted once."""
    present = [g for g in per_step if g is not None]
    if not present:
        return None
    if isinstance(present[0], tuple):  # outer(u, v) at each step: one contraction
        u = torch.stack([g[0] for g in present])
        v = torch.stack([g[1] for g in present])
        return _contract(u, v, like)
    total = (
        present[0]
        if len(present) == 1
        else torch.stack([torch.broadcast_to(g, present[0].shape) for g in present]).sum(0)
    )
    return _reduce_to(total, like)


def _contract(u: torch.Tensor, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """sum over the steps and the leading axes `like` lacks of outer(u, v)."""
    m, k = u.shape[-1], v.shape[-1]
    rows = torch.broadcast_shapes(u.shape[:-1], v.shape[:-1])  # [steps, *lead]
    u, v = u.expand(*rows, m), v.expand(*rows, k)
    lead = u.dim() - 1
    keep = like.dim() - 2  # the param's own leading axes (heads), trailing in lead
    kept_shape = tuple(u.shape[lead - keep : lead])
    u2 = u.reshape(-1, *kept_shape, m).movedim(0, -1)  # [*kept, M, rows]
    v2 = v.reshape(-1, *kept_shape, k).movedim(0, -2)  # [*kept, rows, K]
    return (u2 @ v2).reshape(like.shape)


def _reduce_to(total: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    extra = total.dim() - like.dim()
    if extra > 0:
        total = total.sum(dim=tuple(range(extra)))
    return torch.broadcast_to(total, like.shape) if total.shape != like.shape else total

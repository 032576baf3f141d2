"""Gradients of a MinMax scan from the spec as written, not from its canonical form.

Stage: backend (torch). A MinMax update's gradient is a routing: d s_t / d s_{t-1}
is 0 or 1 and each operand gets the cotangent or nothing. The canonical form
max(min(s, a), b) with a = f(+inf) computes the same values but has ties the
spec does not have (`max(min(h, a), b)` with a < b reads a = max(a, b) = b, and
then min(h, b) ties with b whenever h == b): routed by the form, the gradient
follows the wrong operand. So the values come from the fast scan, and the
backward differentiates the spec's own update, evaluated at every step at once
from the scanned states (the old state of step t is the new state of step t - 1):

  rho_t   = d f(s_{t-1}, x_t) / d s_{t-1}       (0 or 1: the IR's vjp of the update)
  g_t     = dL/ds_t + [rho_{t+1}] g_{t+1}       (a reverse scan of selections)
  grads   = vjp of f(s_{t-1}, x_t) with cotangent g_t, all t at once

Both vjps come from recc.ir.autodiff, the engine whose expressions the Triton
backward prints: the routing is written once, evaluated here on every step's
tensors by the interpreter's TorchOps.

Selections, not products: a NaN cotangent of a step the state does not flow
through stays out of the earlier steps, as in autograd through the loop.
This path stores the states over time (a MinMax state is usually a vector).
"""

from __future__ import annotations

from typing import Any

import torch

from recc.backends.torch import scan as chunked
from recc.interpreter import TorchOps
from recc.ir.autodiff import COTANGENT, vjp
from recc.ir.evaluate import evaluate, evaluate_shared
from recc.ir.nodes import Const, Recurrence, Ref
from recc.lowering import ScanPlan
from recc.lowering.algebra import routing
from recc.signature import Bound


def run_with_spec_gradients(
    plan: ScanPlan, bound: Bound, chunk: int | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    rec = plan.spec
    names = [
        *(("input", n) for n in bound.inputs),
        *(("param", n) for n in bound.params),
        *(("state", n) for n in bound.initial_state),
    ]
    leaves = [_leaf(bound, kind, n) for kind, n in names]
    context = (plan, bound, chunk, names)
    history = _ScanWithSpecGradients.apply(context, *leaves)
    states = dict(zip([s.name for s in rec.states], history))  # [B, T, (H), ...]
    old = _old_states(rec, bound, states)
    scan = chunked._Scan(plan, bound)
    env = scan.env_whole(dict(bound.inputs))
    outputs = chunked.readouts(scan, bound, env, old, states, (bound.B, bound.T))
    finals = {k: v[:, -1] for k, v in states.items()}
    return {k: v.to(bound.out_dtype) for k, v in outputs.items()}, finals


def _leaf(bound: Bound, kind: str, name: str) -> torch.Tensor:
    return {"input": bound.inputs, "param": bound.params, "state": bound.initial_state}[kind][name]


def _old_states(rec: Recurrence, bound: Bound, states: dict[str, torch.Tensor]):
    """The state entering every step: the initial state, then the new states shifted."""
    return {
        s.name: torch.cat([bound.initial_state[s.name].unsqueeze(1), states[s.name][:, :-1]], 1)
        for s in rec.states
    }


def _rebind(bound: Bound, names, tensors) -> Bound:
    parts: dict[str, dict[str, torch.Tensor]] = {"input": {}, "param": {}, "state": {}}
    for (kind, name), x in zip(names, tensors):
        parts[kind][name] = x
    return Bound(
        B=bound.B,
        T=bound.T,
        H=bound.H,
        sizes=bound.sizes,
        inputs=parts["input"],
        params=parts["param"],
        initial_state=parts["state"],
        compute_dtype=bound.compute_dtype,
        out_dtype=bound.out_dtype,
        device=bound.device,
    )


class _ScanWithSpecGradients(torch.autograd.Function):
    """Forward: the chunked scan's states over time. Backward: the spec's routing."""

    @staticmethod
    def forward(ctx, context: Any, *leaves: torch.Tensor):
        plan, bound, chunk, names = context
        rec = plan.spec
        inner = _rebind(bound, names, [x.detach() for x in leaves])
        scan = chunked._Scan(plan, inner)
        chunks = chunked._Chunks(rec, inner, chunk)
        with torch.no_grad():
            _, states, _ = chunked.state_history(scan, inner, chunks)
        history = tuple(chunks.unchunk(states[s.name]).contiguous() for s in rec.states)
        ctx.context = context
        ctx.save_for_backward(*leaves, *history)
        return history

    @staticmethod
    def backward(ctx, *d_history: torch.Tensor):
        plan, bound, _, names = ctx.context
        rec = plan.spec
        saved = ctx.saved_tensors
        leaves = saved[: len(names)]
        order = [s.name for s in rec.states]
        inner = _rebind(bound, names, leaves)
        old = _old_states(rec, inner, dict(zip(order, saved[len(names) :])))
        env = _step_env(rec, inner, old)  # an update reads its state as the old one
        ops = TorchOps(bound.compute_dtype, bound.device)
        lets = {let.name: let.expr for let in rec.lets}
        memo: dict = {}  # every node's value, computed once (the vjps share subtrees)
        seeds = []
        for n, d in zip(order, d_history):
            update = rec.update_of(n)
            d = torch.zeros_like(old[n]) if d is None else d
            # each update reads only its own state (a diagonal Jacobian): the vjp of
            # the update with cotangent 1 is every step's 0/1 routing
            ones = Ref(update.dims, "<ones>", COTANGENT)
            rho = vjp([(update, ones)], lets, wrt={n}.__contains__).of(n)
            keep = torch.zeros_like(d, dtype=torch.bool)
            if rho is not None:
                env["<ones>"] = ops.const(Const((), 1.0))
                (routing,) = evaluate_shared([rho], env, ops, memo)
                keep = torch.broadcast_to(routing, d.shape) != 0
            env[f"<d {n}>"] = reverse_selection_scan(keep, d)
            seeds.append((update, Ref(update.dims, f"<d {n}>", COTANGENT)))
        wanted = {name for _, name in names} | set(order)
        found = vjp(seeds, lets, wrt=wanted.__contains__)
        exprs = {name: found.of(name) for _, name in names if found.of(name) is not None}
        values = dict(zip(exprs, evaluate_shared(list(exprs.values()), env, ops, memo)))
        d_leaves = []
        for (kind, name), leaf in zip(names, leaves):
            if name not in values:
                d_leaves.append(None)
            elif kind == "state":  # only step 0 reads the initial state
                d_leaves.append(torch.broadcast_to(values[name], old[name].shape)[:, 0])
            else:
                d_leaves.append(_sum_to_shape(values[name], leaf.shape))
        return (None, *d_leaves)


def _step_env(rec: Recurrence, bound: Bound, old: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Every step's values at once: params, inputs [B, T, ...], the old states under
    the states' names, and every let."""
    ops = TorchOps(bound.compute_dtype, bound.device)
    env: dict[str, Any] = {**bound.params, **bound.inputs, **old}
    for let in rec.lets:
        env[let.name] = evaluate(let.expr, env, ops)
    return env


def _sum_to_shape(value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A cotangent summed over the axes its leaf was broadcast along (autograd's rule):
    the leading axes the leaf lacks, and its axes of size 1."""
    lead = value.dim() - len(shape)
    if lead > 0:
        value = value.sum(dim=tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and value.shape[i] != 1)
    if axes:
        value = value.sum(dim=axes, keepdim=True)
    return torch.broadcast_to(value, shape).contiguous()


def reverse_selection_scan(keep: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """g_t = c_t + (g_{t+1} if keep_{t+1} else 0) along dim 1, by selection.

    The maps u -> [S] u + sv of the routing algebra (`recc.lowering.algebra.routing`,
    its S and sv slots; the Triton backward prints the same maps), chunked like the
    forward scan: all chunks' maps at once over ~sqrt(T) steps, the carry chunk by
    chunk, then every step."""
    T = c.shape[1]
    # g_t = c_t + [sel_t] g_{t+1} with sel_t = keep_{t+1}; reversed in time it is
    # a forward scan u_s = [sel'_s] u_{s-1} + c'_s
    sel = torch.cat([keep[:, 1:], torch.zeros_like(keep[:, :1])], dim=1).flip(1).to(c.dtype)
    cs = c.flip(1)
    L = chunked.chunk_length(T)
    nc = -(-T // L)
    pad = nc * L - T
    if pad:  # padded steps route nothing and add nothing: no valid step reads them
        sel = torch.cat([sel, torch.zeros_like(sel[:, :pad])], dim=1)
        cs = torch.cat([cs, torch.zeros_like(cs[:, :pad])], dim=1)
    sel = sel.reshape(sel.shape[0], nc, L, *sel.shape[2:])
    cs = cs.reshape(cs.shape[0], nc, L, *cs.shape[2:])
    algebra = routing()
    combine = algebra.combine_for(("s", "sv"), ("s", "sv"))
    apply = algebra.apply_for(("s", "sv"))
    # pass 1: each chunk's map, composed step by step
    total = {"s": sel[:, :, 0], "sv": cs[:, :, 0]}
    for i in range(1, L):
        total = combine(total, {"s": sel[:, :, i], "sv": cs[:, :, i]})
    # carry: the value entering each chunk
    entering = [torch.zeros_like(cs[:, 0, 0])]
    for k in range(nc - 1):
        chunk = {"s": total["s"][:, k], "sv": total["sv"][:, k]}
        entering.append(apply(chunk, {"u": entering[-1]})["u"])
    u = torch.stack(entering, dim=1)
    # pass 2: every step from the entering values
    out = []
    for i in range(L):
        u = apply({"s": sel[:, :, i], "sv": cs[:, :, i]}, {"u": u})["u"]
        out.append(u)
    flat = torch.stack(out, dim=2).reshape(c.shape[0], nc * L, *c.shape[2:])[:, :T]
    return flat.flip(1)

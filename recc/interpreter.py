"""The sequential interpreter: the reference semantics of every spec.

Stage: runtime (reference). Runs a recurrence one time step after another in
torch on any device, through the shared IR evaluator (`recc.ir.evaluate`), so
it is differentiable by autograd with respect to inputs, params and the
initial state. Every lowering is checked against it.

Layout: values carry leading batch axes (`[B]` or `[B, H]`) before the spec's
own dims; params carry none (or `[H]`) and broadcast.
"""

from __future__ import annotations

from typing import Any

import torch

from recc.ir.evaluate import align, evaluate, step
from recc.ir.nodes import Apply, Const, Recurrence, Ref, embed, walk
from recc.ir.ops import ELEMENTWISE as ELEMENTWISE_OPS
from recc.ir.ops import INTERNAL, OPS
from recc.signature import Bound


class TorchOps:
    """IR operators on torch tensors with leading batch axes."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype = dtype
        self.device = device
        self._consts: dict[float, torch.Tensor] = {}

    def const(self, node: Const) -> torch.Tensor:
        # Made once per value: a time loop asks for the same constants every step.
        value = self._consts.get(node.value)
        if value is None:
            value = torch.tensor(node.value, dtype=self.dtype, device=self.device)
            self._consts[node.value] = value
        return value

    def apply(self, node: Apply, args: list[Any]) -> torch.Tensor:
        op = node.op
        if op in ELEMENTWISE_OPS or op in INTERNAL:
            # a constant stays 0-d: it broadcasts as it is, and pow(x, 2) stays torch's
            # scalar-exponent pow (x * x), as constant folding computes it
            aligned = [
                v if isinstance(a, Const) else align(v, a.dims, node.dims)
                for v, a in zip(args, node.args)
            ]
            return OPS[op].torch(*aligned)
        if op == "matmul":
            a, b = args
            da, db = node.args[0].dims, node.args[1].dims
            if len(da) == 2 and len(db) == 1:
                return (a @ b.unsqueeze(-1)).squeeze(-1)
            if len(da) == 1 and len(db) == 2:
                return (a.unsqueeze(-2) @ b).squeeze(-2)
            if len(da) == 1 and len(db) == 1:
                return (a * b).sum(-1)
            return a @ b
        if op == "outer":
            return args[0].unsqueeze(-1) * args[1].unsqueeze(-2)
        if op == "dot":
            return (args[0] * args[1]).sum(-1)
        if op == "sum":
            k = len(node.args[0].dims)
            return args[0].sum(dim=tuple(range(-k, 0))) if k else args[0]
        if op == "transpose":
            return args[0].transpose(-1, -2)
        if op == "sum_to":  # over the trailing dims the node lacks
            (x,), dims = args, node.args[0].dims
            keep = embed(node.dims, dims)
            lacking = [i - len(dims) for i in range(len(dims)) if i not in keep]
            return x.sum(dim=tuple(lacking)) if lacking else x
        if op == "sum_steps":  # over every leading axis: the steps (and batch) evaluated
            (x,) = args
            lead = x.dim() - len(node.dims)
            return x.sum(dim=tuple(range(lead))) if lead > 0 else x
        raise AssertionError(f"unknown op {op}")  # pragma: no cover


# Every elementwise operator on tensors, as the analysis folds constants with it too.
ELEMENTWISE = {name: OPS[name].torch for name in sorted(ELEMENTWISE_OPS)}


def run(rec: Recurrence, bound: Bound) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run all T steps. Returns (outputs `[B, T, (H), ...]`, final states `[B, (H), ...]`).

    Computes in `bound.compute_dtype` (fp32 for bf16/fp16 inputs, fp64 for
    fp64); outputs are cast back to `bound.out_dtype`, final states stay in
    the compute dtype.
    """
    ops = TorchOps(bound.compute_dtype, bound.device)
    states = dict(bound.initial_state)
    per_step: dict[str, list[torch.Tensor]] = {o.name: [] for o in rec.outputs}
    env_static = dict(bound.params)
    for t in range(bound.T):
        env = dict(env_static)
        for name, value in bound.inputs.items():
            env[name] = value[:, t]
        env.update(states)
        states, outs = step(rec, ops, env)
        for o in rec.outputs:
            per_step[o.name].append(_full(outs[o.name], bound, o.expr.dims))
    outputs = {}
    for o in rec.outputs:
        if per_step[o.name]:
            outputs[o.name] = torch.stack(per_step[o.name], dim=1).to(bound.out_dtype)
        else:
            shape = (bound.B, 0, *bound.batch_heads, *bound.shape_of(o.expr.dims))
            outputs[o.name] = torch.zeros(shape, dtype=bound.out_dtype, device=bound.device)
    finals = {s.name: _full(states[s.name], bound, s.dims) for s in rec.states}
    return outputs, finals


def _full(value: torch.Tensor, bound: Bound, dims: tuple[str, ...]) -> torch.Tensor:
    """Broadcast a per-step value to its full `[B, (H), *dims]` shape."""
    shape = (bound.B, *bound.batch_heads, *bound.shape_of(dims))
    return value.expand(shape) if tuple(value.shape) != shape else value


def last_step(
    rec: Recurrence, bound: Bound, names: tuple[str, ...], old: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The new values of states `names` at the last step, as `run` computes them.

    `old` binds the states entering the last step that these updates read. For
    a state nothing else reads this is its final state, and differentiating it
    differentiates its update at that one step, as the loop does (see
    `recc.analysis.liveness`). With T = 0 the final state is the initial one."""
    if bound.T == 0:
        return {n: bound.initial_state[n] for n in names}
    ops = TorchOps(bound.compute_dtype, bound.device)
    env: dict[str, Any] = dict(bound.params)
    env.update({name: value[:, -1] for name, value in bound.inputs.items()})
    env.update(old)
    for let in rec.lets:
        if all(r in env for r in _refs(let.expr)):
            env[let.name] = evaluate(let.expr, env, ops)
    return {n: _full(evaluate(rec.update_of(n), env, ops), bound, rec.state(n).dims) for n in names}


def _refs(expr) -> set[str]:
    return {node.name for node in walk(expr) if isinstance(node, Ref)}

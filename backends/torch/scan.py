"""Chunked scan for diagonal and MinMax recurrences, in portable torch.

Stage: backend (torch). The sequence is cut into `nc` chunks of `L` steps.

  pass 1  all chunks at once, step by step: each chunk's transition from a
          zero start, summarised as one map (for s' = a*s + b: the products
          of a and the local state; for MinMax: the composed (a, b));
  carry   chunk by chunk: the state entering every chunk (nc small steps);
  pass 2  all chunks at once again, from their true entering states: the
          states step by step, and the outputs read off them.

Vector states (no larger than a step's inputs) get their gates and outputs
computed for the whole sequence at once, a few large ops; memory O(inputs).
Expanded states (Mamba's [D, N]) get their gates recomputed per step from the
inputs in both passes, so memory stays O(inputs + outputs + one step of state
per chunk): the state is never materialised over time. With L ~ sqrt(T) this
is about 3*sqrt(T) short loops of vector ops instead of T. Gradients come
from torch autograd through these ops; `compiled.py` runs the same code
under torch.compile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from recc.analysis.forms import Analysis, DiagonalForm, MinMaxForm
from recc.analysis.rewrite import state_dependent_lets
from recc.interpreter import TorchOps, maximum, minimum
from recc.ir.evaluate import align, evaluate
from recc.ir.nodes import Expr, Recurrence
from recc.signature import Bound

INF = float("inf")


def supports(analysis: Analysis) -> bool:
    return isinstance(analysis.form, (DiagonalForm, MinMaxForm))


def chunk_length(T: int) -> int:
    """About sqrt(T): balances the two passes (2L steps) against the carry (T/L)."""
    return max(1, min(256, math.ceil(math.sqrt(max(T, 1)))))


@dataclass
class _Step:
    """One step's environment (inputs, params, state-free lets) for all chunks."""

    env: dict[str, Any]


class _Scan:
    def __init__(self, rec: Recurrence, analysis: Analysis, bound: Bound) -> None:
        self.rec, self.form, self.bound = rec, analysis.form, bound
        self.ops = TorchOps(bound.compute_dtype, bound.device)
        names = {s.name for s in rec.states}
        dependent = state_dependent_lets(rec, names)
        self.free_lets = [let for let in rec.lets if let.name not in dependent]
        self.dependent_lets = [let for let in rec.lets if let.name in dependent]

    # ---- per-step coefficients ----
    def env_at(self, steps: dict[str, tuple[torch.Tensor, ...]], i: int) -> dict[str, Any]:
        """Step i of every chunk, from inputs unbound along the step axis."""
        return self.env_whole({name: x[i] for name, x in steps.items()})

    def env_whole(self, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Inputs, params and state-free lets at any leading batch axes."""
        env: dict[str, Any] = dict(self.bound.params)
        env.update(inputs)
        for let in self.free_lets:
            env[let.name] = evaluate(let.expr, env, self.ops)
        return env

    def coef(self, expr: Expr | None, env: dict[str, Any], dims, shape) -> torch.Tensor | None:
        if expr is None:
            return None
        value = align(evaluate(expr, env, self.ops), expr.dims, dims)
        return torch.broadcast_to(value, shape)

    def step_maps(self, env: dict[str, Any], shapes: dict[str, tuple[int, ...]], valid):
        """The step's map per state group, with padded steps made the identity."""
        maps = []
        dtype = self.bound.compute_dtype
        if isinstance(self.form, DiagonalForm):
            for block in self.form.blocks:
                shape = shapes[block.states[0]]
                dims = self.rec.state(block.states[0]).dims
                a = [[self.coef(c, env, dims, shape) for c in row] for row in block.coupling]
                b = [self.coef(c, env, dims, shape) for c in block.inject]
                if valid is not None:
                    a = [
                        [
                            _where(valid, x, 1.0 if i == j else 0.0, shape, dtype)
                            for j, x in enumerate(row)
                        ]
                        for i, row in enumerate(a)
                    ]
                    b = [_where(valid, x, 0.0, shape, dtype) for x in b]
                maps.append((a, b))
        else:
            assert isinstance(self.form, MinMaxForm)
            for s in self.rec.states:
                a_expr, b_expr = self.form.coefficients[s.name]
                shape = shapes[s.name]
                a = self.coef(a_expr, env, s.dims, shape)
                b = self.coef(b_expr, env, s.dims, shape)
                if valid is not None:
                    # None reads as +inf (max-min) or 0 (max-plus) for a, -inf for b.
                    identity_a = INF if self.form.semiring == "max-min" else 0.0
                    a = _where(valid, a, identity_a, shape, dtype, absent=identity_a)
                    b = _where(valid, b, -INF, shape, dtype, absent=-INF)
                maps.append((a, b))
        return maps

    # ---- map algebra: apply a map to states; compose two maps ----
    def apply(self, maps, states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        new = {}
        if isinstance(self.form, DiagonalForm):
            for block, (a, b) in zip(self.form.blocks, maps):
                for i, target in enumerate(block.states):
                    total = b[i]
                    for j, source in enumerate(block.states):
                        if a[i][j] is not None:
                            total = _fma(total, a[i][j], states[source])
                    new[target] = total if total is not None else torch.zeros_like(states[target])
            return new
        for s, (a, b) in zip(self.rec.states, maps):
            x = states[s.name]
            if self.form.semiring == "max-min":
                y = x if a is None else minimum(x, a)
            else:
                y = x if a is None else x + a
            new[s.name] = y if b is None else maximum(y, b)
        return new

    def compose(self, first, then):
        """The map `then` after `first`."""
        if isinstance(self.form, DiagonalForm):
            out = []
            for (a1, b1), (a2, b2) in zip(first, then):
                k = len(a1)
                a = [
                    [
                        _dot([a2[i][m] for m in range(k)], [a1[m][j] for m in range(k)])
                        for j in range(k)
                    ]
                    for i in range(k)
                ]
                b = [_dot(a2[i], b1, start=b2[i]) for i in range(k)]
                out.append((a, b))
            return out
        out = []
        for (a1, b1), (a2, b2) in zip(first, then):
            if self.form.semiring == "max-min":
                a = _opt(minimum, a1, a2)
                b = _opt(maximum, None if b1 is None else _opt(minimum, a2, b1), b2)
            else:
                a = _opt(torch.add, a1, a2)
                b = _opt(maximum, None if b1 is None else _opt(torch.add, b1, a2), b2)
            out.append((a, b))
        return out

    def chunk(self, maps, c: int):
        return _map_tensors(maps, lambda x: x[:, c])


def _where(valid, x, identity: float, shape, dtype, absent: float = 0.0) -> torch.Tensor:
    """`x` on valid chunks, the identity's coefficient on padded ones.

    `absent` is what a None coefficient means (0 for a linear coefficient).
    """
    mask = valid.reshape((1, *valid.shape) + (1,) * (len(shape) - 1 - valid.dim()))
    if x is None:
        x = torch.full((), absent, dtype=dtype, device=valid.device)
    fill = torch.full((), identity, dtype=dtype, device=valid.device)
    return torch.broadcast_to(torch.where(mask, x, fill), shape)


def _fma(total, x, y):
    """total + x * y, in one op where there is a total (None is zero)."""
    return x * y if total is None else torch.addcmul(total, x, y)


def _dot(xs, ys, start=None):
    total = start
    for x, y in zip(xs, ys):
        if x is not None and y is not None:
            total = _fma(total, x, y)
    return total


def _opt(fn, x, y):
    if x is None:
        return y
    if y is None:
        return x
    return fn(x, y)


def _unbind_steps(tree, L: int) -> list:
    """A tree of `[B, nc, L, ...]` tensors as L trees of `[B, nc, ...]` steps."""
    if tree is None:
        return [None] * L
    if isinstance(tree, torch.Tensor):
        return list(tree.unbind(2))
    children = [_unbind_steps(t, L) for t in tree]
    return [type(tree)(child[i] for child in children) for i in range(L)]


def _map_tensors(tree, fn):
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    return type(tree)(_map_tensors(t, fn) for t in tree)


def run_scan(
    rec: Recurrence, analysis: Analysis, bound: Bound, chunk: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs `[B, T, (H), ...]` and final states, like `recc.interpreter.run`."""
    scan = _Scan(rec, analysis, bound)
    B, T = bound.B, bound.T
    heads = bound.batch_heads
    if T == 0:
        outputs = {
            o.name: torch.zeros(
                (B, 0, *heads, *bound.shape_of(o.expr.dims)),
                dtype=bound.out_dtype,
                device=bound.device,
            )
            for o in rec.outputs
        }
        return outputs, dict(bound.initial_state)
    L = chunk or chunk_length(T)
    nc = math.ceil(T / L)
    pad = nc * L - T
    inputs = {}
    for name, x in bound.inputs.items():
        if pad:
            x = torch.cat([x, x[:, -1:].expand(B, pad, *x.shape[2:])], dim=1)
        inputs[name] = x.reshape(B, nc, L, *x.shape[2:])
    shapes = {s.name: (B, nc, *heads, *bound.shape_of(s.dims)) for s in rec.states}
    # Steps past T in the last chunk are padding: they must act as the identity.
    valid_from = L - pad  # first padded position within the last chunk

    def valid_at(i: int) -> torch.Tensor | None:
        if i < valid_from:
            return None
        mask = torch.ones(nc, dtype=torch.bool, device=bound.device)
        mask[-1] = False
        return mask

    state_size = sum(math.prod(shapes[s.name][2:]) for s in rec.states)
    input_size = sum(math.prod(x.shape[3:]) for x in inputs.values())
    if state_size <= input_size:
        per_step = _vector_states(scan, bound, inputs, shapes, nc, L, T)
    else:
        per_step = _expanded_states(scan, bound, inputs, shapes, nc, L, valid_at)
    finals, outputs_at = per_step
    outputs = {}
    for o in rec.outputs:
        y = outputs_at[o.name]  # [B, nc, L, ...]
        y = y.reshape(B, nc * L, *y.shape[3:])[:, :T]
        outputs[o.name] = y.to(bound.out_dtype)
    return outputs, finals


def _carry(scan: _Scan, bound: Bound, summary, nc: int):
    """The state entering each chunk, chunk by chunk; and the final state."""
    entering: list[dict[str, torch.Tensor]] = []
    state = {k: v for k, v in bound.initial_state.items()}
    for c in range(nc):
        entering.append(state)
        chunk_map = scan.chunk(summary, c)
        state = {
            k: torch.broadcast_to(v, bound.initial_state[k].shape)
            for k, v in scan.apply(chunk_map, state).items()
        }
    stacked = {name: torch.stack([e[name] for e in entering], dim=1) for name in state}
    return stacked, state


def _vector_states(scan: _Scan, bound: Bound, inputs, shapes, nc: int, L: int, T: int):
    """States no larger than a step's inputs: whole-sequence gates, stored states.

    The gates (every step's map) and the outputs are computed for the whole
    sequence at once, in a few large tensor ops; only the recurrence itself
    steps through time. Memory is O(inputs): the maps and the states over time
    are no larger than the inputs.
    """
    B = bound.B
    heads = bound.batch_heads
    rec = scan.rec
    env = scan.env_whole(inputs)
    whole = {k: (B, nc, L, *v[2:]) for k, v in shapes.items()}
    pad = nc * L - T
    valid = None
    if pad:  # steps past T (the end of the last chunk) act as the identity
        valid = (torch.arange(nc * L, device=bound.device) < T).reshape(nc, L)
    # unbound once: slicing step i out of a tensor L times would cost autograd a
    # full-size gradient per slice; unbind's backward stacks them once
    steps = _unbind_steps(scan.step_maps(env, whole, valid), L)
    # pass 1: every chunk's map, composed step by step from the identity
    summary = steps[0]
    for i in range(1, L):
        summary = scan.compose(summary, steps[i])
    entering, finals = _carry(scan, bound, summary, nc)
    # pass 2: the states, all chunks at once from their entering states (stacked,
    # not written into a buffer in place: autograd would copy the buffer per step)
    current = {k: torch.broadcast_to(v, shapes[k]) for k, v in entering.items()}
    history: dict[str, list[torch.Tensor]] = {k: [] for k in entering}
    for i in range(L):
        current = scan.apply(steps[i], current)
        for k, v in current.items():
            history[k].append(torch.broadcast_to(v, shapes[k]))
    states = {k: torch.stack(vs, dim=2) for k, vs in history.items()}
    # outputs read the new states; state-dependent lets read the old ones
    out_env = dict(env)
    if scan.dependent_lets:
        old = {
            k: torch.cat([entering[k].unsqueeze(2), v[:, :, :-1]], dim=2) for k, v in states.items()
        }
        let_env = {**env, **{k: torch.broadcast_to(v, whole[k]) for k, v in old.items()}}
        for let in scan.dependent_lets:
            let_env[let.name] = evaluate(let.expr, let_env, scan.ops)
            out_env[let.name] = let_env[let.name]
    out_env.update(states)
    outputs_at = {}
    for o in rec.outputs:
        shape = (B, nc, L, *heads, *bound.shape_of(o.expr.dims))
        outputs_at[o.name] = torch.broadcast_to(evaluate(o.expr, out_env, scan.ops), shape)
    return finals, outputs_at


def _expanded_states(scan: _Scan, bound: Bound, inputs, shapes, nc: int, L: int, valid_at):
    """States larger than a step's inputs (Mamba's [D, N]): never stored over time.

    Each step's gates are recomputed from the inputs in both passes, so the
    forward's memory stays O(inputs + outputs + one step of state per chunk).
    Under autograd both passes run in segments of ~sqrt(L) steps whose
    insides are recomputed in the backward instead of stored: the backward
    keeps ~2 sqrt(L) steps of state per chunk, O(B T S / sqrt(L)), not the
    O(B T S) state history plain autograd would keep.
    """
    B = bound.B
    heads = bound.batch_heads
    rec = scan.rec
    segment = math.isqrt(L - 1) + 1  # ceil(sqrt(L))
    starts = range(0, L, segment)
    tensors = [*inputs.values(), *bound.params.values(), *bound.initial_state.values()]
    recompute = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    # step views made once: slicing step i out of an input in every step would
    # cost autograd a full-size gradient per slice; unbind's backward stacks once
    steps = {name: x.unbind(2) for name, x in inputs.items()}

    def run(fn, *args):
        if recompute:
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # pass 1: every chunk's map, composed step by step from the identity
    def compose_steps(summary, start: int):
        for i in range(start, min(start + segment, L)):
            maps = scan.step_maps(scan.env_at(steps, i), shapes, valid_at(i))
            summary = maps if summary is None else scan.compose(summary, maps)
        return summary

    summary = None
    for start in starts:
        summary = run(compose_steps, summary, start)
    entering, finals = _carry(scan, bound, summary, nc)

    # pass 2: states and outputs, all chunks at once from their entering states
    def run_steps(states, start: int):
        ys: dict[str, list[torch.Tensor]] = {o.name: [] for o in rec.outputs}
        for i in range(start, min(start + segment, L)):
            env = scan.env_at(steps, i)
            maps = scan.step_maps(env, shapes, None)  # padded steps' outputs are dropped
            env = dict(env)
            env.update(states)
            for let in scan.dependent_lets:
                env[let.name] = evaluate(let.expr, env, scan.ops)
            states = {
                k: torch.broadcast_to(v, shapes[k]) for k, v in scan.apply(maps, states).items()
            }
            out_env = {**env, **states}
            for o in rec.outputs:
                shape = (B, nc, *heads, *bound.shape_of(o.expr.dims))
                ys[o.name].append(torch.broadcast_to(evaluate(o.expr, out_env, scan.ops), shape))
        return states, ys

    states = entering
    per_step: dict[str, list[torch.Tensor]] = {o.name: [] for o in rec.outputs}
    for start in starts:
        states, ys = run(run_steps, states, start)
        for name, values in ys.items():
            per_step[name].extend(values)
    return finals, {name: torch.stack(ys, dim=2) for name, ys in per_step.items()}

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
from typing import Any

import torch

from recc.interpreter import TorchOps, last_step
from recc.ir.evaluate import align, evaluate
from recc.ir.nodes import Expr, Recurrence
from recc.lowering import MinMaxForm, ScanPlan
from recc.signature import Bound

INF = float("inf")


def chunk_length(T: int) -> int:
    """About sqrt(T): balances the two passes (2L steps) against the carry (T/L)."""
    return max(1, min(256, math.ceil(math.sqrt(max(T, 1)))))


class _Scan:
    """One call's scan of `plan` (the facts of `recc.lowering.scan`)."""

    def __init__(self, plan: ScanPlan, bound: Bound) -> None:
        self.plan, self.rec, self.bound = plan, plan.spec, bound
        self.ops = TorchOps(bound.compute_dtype, bound.device)
        self.free_lets = plan.state_free_lets
        self.dependent_lets = plan.state_reading_lets
        # states nothing reads: only their final leaves the scan (see unread_finals)
        self.unread = plan.unread
        # each state group's step-map algebra (recc.lowering.algebra), and its states
        self.algebras = [group.algebra for group in plan.groups]
        self.groups = [group.states for group in plan.groups]

    def unread_finals(self, finals: dict[str, torch.Tensor], entering_last) -> dict:
        """`finals` with each state nothing reads recomputed from its update at the
        last step (`entering_last`: the states entering it), as the loop computes it.

        The scan's history of such a state then reaches nothing, so autograd never
        differentiates its earlier steps (whose cotangents are 0, and 0 times an
        infinite local derivative would be NaN; see recc.analysis.liveness)."""
        if not self.unread:
            return finals
        old = {k: v for k, v in entering_last.items() if k not in self.unread}
        return {**finals, **last_step(self.rec, self.bound, self.unread, old)}

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
        """The step's map per state group (slot -> tensor; `recc.lowering.algebra`),
        with padded steps made the identity."""
        maps = []
        dtype = self.bound.compute_dtype
        for group in self.plan.groups:
            shape = shapes[group.states[0]]
            dims = self.rec.state(group.states[0]).dims
            m = {k: self.coef(c, env, dims, shape) for k, c in group.slots.items()}
            if valid is not None:
                # Padded steps get the identity's coefficients, by selection (a
                # `where`, whose backward never multiplies a padded step's garbage
                # by zero). An absent slot stays absent: it already is the identity's
                # element, or (an affine map's absent coefficient, a zero) a
                # materialised 0 would make 0 * inf and 0 * NaN NaN. Nothing reads a
                # padded step's state (finals come from the last valid step).
                identity = group.algebra.identity
                m = {k: _where(valid, x, identity[k], shape, dtype) for k, x in m.items()}
            maps.append(m)
        return maps

    # ---- map algebra (recc.lowering.algebra): apply a map to states; compose two ----
    def apply(self, maps, states: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        new = {}
        for algebra, names, m in zip(self.algebras, self.groups, maps):
            xs = {x: states[n] for x, n in zip(algebra.components, names)}
            values = algebra.apply_for(tuple(m))(m, xs)
            for x, n in zip(algebra.components, names):
                # a state whose update reads nothing and injects nothing is 0
                new[n] = values[x] if x in values else torch.zeros_like(states[n])
        return new

    def compose(self, first, then):
        """The map `then` after `first`."""
        return [
            algebra.combine_for(tuple(m1), tuple(m2))(m1, m2)
            for algebra, m1, m2 in zip(self.algebras, first, then)
        ]

    def chunk(self, maps, c: int):
        return _map_tensors(maps, lambda x: x[:, c])


def _where(valid, x, identity: float, shape, dtype) -> torch.Tensor:
    """`x` on valid chunks, the identity's coefficient on padded ones."""
    mask = valid.reshape((1, *valid.shape) + (1,) * (len(shape) - 1 - valid.dim()))
    fill = torch.full((), identity, dtype=dtype, device=valid.device)
    return torch.broadcast_to(torch.where(mask, x, fill), shape)


def _unbind_steps(tree, L: int) -> list:
    """A tree (lists, tuples, dicts) of `[B, nc, L, ...]` tensors as L trees of
    `[B, nc, ...]` steps."""
    if tree is None:
        return [None] * L
    if isinstance(tree, torch.Tensor):
        return list(tree.unbind(2))
    if isinstance(tree, dict):
        children = {k: _unbind_steps(t, L) for k, t in tree.items()}
        return [{k: child[i] for k, child in children.items()} for i in range(L)]
    children = [_unbind_steps(t, L) for t in tree]
    return [type(tree)(child[i] for child in children) for i in range(L)]


def _map_tensors(tree, fn):
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_tensors(t, fn) for k, t in tree.items()}
    return type(tree)(_map_tensors(t, fn) for t in tree)


def run_scan(
    plan: ScanPlan, bound: Bound, chunk: int | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Outputs `[B, T, (H), ...]` and final states, like `recc.interpreter.run`.

    MinMax recurrences under autograd take their gradients from the spec as
    written (`spec_adjoint`): the canonical form max(min(s, a), b) has ties the
    spec does not have, and a gradient is a routing through those ties."""
    rec = plan.spec
    if bound.T == 0:
        outputs = {
            o.name: torch.zeros(
                (bound.B, 0, *bound.batch_heads, *bound.shape_of(o.expr.dims)),
                dtype=bound.out_dtype,
                device=bound.device,
            )
            for o in rec.outputs
        }
        return outputs, dict(bound.initial_state)
    if isinstance(plan.form, MinMaxForm) and needs_grad(bound):
        from recc.backends.torch.spec_adjoint import run_with_spec_gradients

        return run_with_spec_gradients(plan, bound, chunk)
    scan = _Scan(plan, bound)
    chunks = _Chunks(rec, bound, chunk)
    if chunks.state_size() <= chunks.input_size():
        finals, outputs_at = _vector_states(scan, bound, chunks)
    else:
        finals, outputs_at = _expanded_states(scan, bound, chunks)
    outputs = {o.name: chunks.unchunk(outputs_at[o.name]).to(bound.out_dtype) for o in rec.outputs}
    return outputs, finals


def needs_grad(bound: Bound) -> bool:
    """Whether autograd will differentiate this call's results."""
    tensors = [*bound.inputs.values(), *bound.params.values(), *bound.initial_state.values()]
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _Chunks:
    """The sequence cut into `nc` chunks of `L` steps; the last chunk's tail is padding."""

    def __init__(self, rec: Recurrence, bound: Bound, chunk: int | None) -> None:
        B, T = bound.B, bound.T
        self.T = T
        self.L = L = chunk or chunk_length(T)
        self.nc = nc = math.ceil(T / L)
        self.pad = pad = nc * L - T
        self.inputs = {}
        for name, x in bound.inputs.items():
            if pad:  # a detached copy of the last step: finite where the real steps
                # are, and no gradient flows back from it
                tail = x[:, -1:].detach().expand(B, pad, *x.shape[2:])
                x = torch.cat([x, tail], dim=1)
            self.inputs[name] = x.reshape(B, nc, L, *x.shape[2:])
        heads = bound.batch_heads
        self.shapes = {s.name: (B, nc, *heads, *bound.shape_of(s.dims)) for s in rec.states}
        self.device = bound.device
        # the final state is read at the last valid step, never past it
        self.last_step = (T - 1) - (nc - 1) * L  # within the last chunk

    def state_size(self) -> int:
        return sum(math.prod(shape[2:]) for shape in self.shapes.values())

    def input_size(self) -> int:
        return sum(math.prod(x.shape[3:]) for x in self.inputs.values())

    def valid(self) -> torch.Tensor | None:
        """[nc, L]: True on real steps; None without padding."""
        if not self.pad:
            return None
        steps = torch.arange(self.nc * self.L, device=self.device)
        return (steps < self.T).reshape(self.nc, self.L)

    def valid_at(self, i: int) -> torch.Tensor | None:
        """[nc]: True where step i of a chunk is real; None where it is in every chunk."""
        if i < self.L - self.pad:
            return None
        mask = torch.ones(self.nc, dtype=torch.bool, device=self.device)
        mask[-1] = False
        return mask

    def inert(
        self, x: torch.Tensor, valid: torch.Tensor | None, axes: int, last: torch.Tensor
    ) -> torch.Tensor:
        """A state `x` (leading [B, nc(, L)]) as the readouts see it: on padded steps,
        a detached copy of `last`, the state at the last real step.

        A padded step's own state may be anything (an update that reads no state
        has no identity map: its padded steps give 0), and its readouts, though
        discarded, are differentiated: with `q / h` at h = 0, autograd's 0 * inf
        would carry NaN into the params' gradients. The last real state gives
        padded readouts the derivatives of a real step, and no gradient."""
        if valid is None:
            return x
        mask = valid.reshape((1, *valid.shape) + (1,) * (x.dim() - 1 - axes))
        fill = last.detach().reshape(last.shape[0], *(1,) * axes, *last.shape[1:])
        return torch.where(mask, x, fill)

    def unchunk(self, y: torch.Tensor) -> torch.Tensor:
        """[B, nc, L, ...] -> [B, T, ...]."""
        return y.reshape(y.shape[0], self.nc * self.L, *y.shape[3:])[:, : self.T]


def _carry(scan: _Scan, bound: Bound, summary, nc: int):
    """The state entering each chunk, chunk by chunk (the last chunk's own map,
    which may hold padded steps, is never applied: the final state is read at the
    last valid step)."""
    entering: list[dict[str, torch.Tensor]] = []
    state = {k: v for k, v in bound.initial_state.items()}
    for c in range(nc):
        entering.append(state)
        if c == nc - 1:
            break
        chunk_map = scan.chunk(summary, c)
        state = {
            k: torch.broadcast_to(v, bound.initial_state[k].shape)
            for k, v in scan.apply(chunk_map, state).items()
        }
    return {name: torch.stack([e[name] for e in entering], dim=1) for name in state}


def state_history(scan: _Scan, bound: Bound, chunks: _Chunks):
    """Every step's new state `[B, nc, L, (H), ...]` and the states entering each chunk.

    The gates (every step's map) are computed for the whole sequence at once,
    in a few large tensor ops; only the recurrence itself steps through time."""
    env = scan.env_whole(chunks.inputs)
    B, nc, L = bound.B, chunks.nc, chunks.L
    whole = {k: (B, nc, L, *v[2:]) for k, v in chunks.shapes.items()}
    # unbound once: slicing step i out of a tensor L times would cost autograd a
    # full-size gradient per slice; unbind's backward stacks them once
    steps = _unbind_steps(scan.step_maps(env, whole, chunks.valid()), L)
    # pass 1: every chunk's map, composed step by step from the identity
    summary = steps[0]
    for i in range(1, L):
        summary = scan.compose(summary, steps[i])
    entering = _carry(scan, bound, summary, nc)
    # pass 2: the states, all chunks at once from their entering states (stacked,
    # not written into a buffer in place: autograd would copy the buffer per step)
    current = {k: torch.broadcast_to(v, chunks.shapes[k]) for k, v in entering.items()}
    history: dict[str, list[torch.Tensor]] = {k: [] for k in entering}
    for i in range(L):
        current = scan.apply(steps[i], current)
        for k, v in current.items():
            history[k].append(torch.broadcast_to(v, chunks.shapes[k]))
    states = {k: torch.stack(vs, dim=2) for k, vs in history.items()}
    return env, states, entering


def _vector_states(scan: _Scan, bound: Bound, chunks: _Chunks):
    """States no larger than a step's inputs: whole-sequence gates, stored states.

    Memory is O(inputs): the maps and the states over time are no larger than
    the inputs. Outputs are read off the stored states in a few large ops."""
    env, states, entering = state_history(scan, bound, chunks)
    finals = {k: v[:, -1, chunks.last_step] for k, v in states.items()}
    old = {k: torch.cat([entering[k].unsqueeze(2), v[:, :, :-1]], dim=2) for k, v in states.items()}
    finals = scan.unread_finals(finals, {k: v[:, -1, chunks.last_step] for k, v in old.items()})
    valid = chunks.valid()
    old = {k: chunks.inert(v, valid, 2, finals[k]) for k, v in old.items()}
    new = {k: chunks.inert(v, valid, 2, finals[k]) for k, v in states.items()}
    outputs_at = readouts(scan, bound, env, old, new, (bound.B, chunks.nc, chunks.L))
    return finals, outputs_at


def readouts(scan: _Scan, bound: Bound, env, old, new, lead: tuple[int, ...]):
    """Every output from the new states; state-dependent lets read the old ones.

    `old`, `new`: states over time with leading axes `lead` (then heads and dims)."""
    rec = scan.rec
    heads = bound.batch_heads
    out_env = dict(env)
    if scan.dependent_lets:
        let_env = dict(env)
        for s in rec.states:
            let_env[s.name] = torch.broadcast_to(
                old[s.name], (*lead, *heads, *bound.shape_of(s.dims))
            )
        for let in scan.dependent_lets:
            let_env[let.name] = evaluate(let.expr, let_env, scan.ops)
            out_env[let.name] = let_env[let.name]
    out_env.update(new)
    outputs_at = {}
    for o in rec.outputs:
        shape = (*lead, *heads, *bound.shape_of(o.expr.dims))
        outputs_at[o.name] = torch.broadcast_to(evaluate(o.expr, out_env, scan.ops), shape)
    return outputs_at


def _expanded_states(scan: _Scan, bound: Bound, chunks: _Chunks):
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
    L, nc, shapes = chunks.L, chunks.nc, chunks.shapes
    segment = math.isqrt(L - 1) + 1  # ceil(sqrt(L))
    starts = range(0, L, segment)
    recompute = needs_grad(bound)
    # step views made once: slicing step i out of an input in every step would
    # cost autograd a full-size gradient per slice; unbind's backward stacks once
    steps = {name: x.unbind(2) for name, x in chunks.inputs.items()}

    def run(fn, *args):
        if recompute:
            return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    # pass 1: every chunk's map, composed step by step from the identity
    def compose_steps(summary, start: int):
        for i in range(start, min(start + segment, L)):
            maps = scan.step_maps(scan.env_at(steps, i), shapes, chunks.valid_at(i))
            summary = maps if summary is None else scan.compose(summary, maps)
        return summary

    summary = None
    for start in starts:
        summary = run(compose_steps, summary, start)
    entering = _carry(scan, bound, summary, nc)

    # pass 2: states and outputs, all chunks at once from their entering states
    def run_steps(states, start: int, last, before_last):
        ys: dict[str, list[torch.Tensor]] = {o.name: [] for o in rec.outputs}

        def padded(state, valid, name):  # padded steps come after `last` is known
            return state if valid is None else chunks.inert(state, valid, 1, last[name])

        for i in range(start, min(start + segment, L)):
            env = scan.env_at(steps, i)
            valid = chunks.valid_at(i)
            maps = scan.step_maps(env, shapes, valid)
            if i == chunks.last_step:  # the states entering the last real step
                before_last = {k: v[:, -1] for k, v in states.items()}
            env = dict(env)
            env.update({k: padded(v, valid, k) for k, v in states.items()})
            for let in scan.dependent_lets:
                env[let.name] = evaluate(let.expr, env, scan.ops)
            states = {
                k: torch.broadcast_to(v, shapes[k]) for k, v in scan.apply(maps, states).items()
            }
            if i == chunks.last_step:  # the last real step of the last chunk
                last = {k: v[:, -1] for k, v in states.items()}
            out_env = {**env, **{k: padded(v, valid, k) for k, v in states.items()}}
            for o in rec.outputs:
                shape = (B, nc, *heads, *bound.shape_of(o.expr.dims))
                ys[o.name].append(torch.broadcast_to(evaluate(o.expr, out_env, scan.ops), shape))
        return states, ys, last, before_last

    states = entering
    finals = before_last = None
    per_step: dict[str, list[torch.Tensor]] = {o.name: [] for o in rec.outputs}
    for start in starts:
        states, ys, finals, before_last = run(run_steps, states, start, finals, before_last)
        for name, values in ys.items():
            per_step[name].extend(values)
    finals = scan.unread_finals(finals, before_last)
    return finals, {name: torch.stack(ys, dim=2) for name, ys in per_step.items()}

"""The Newton-parallel solver in torch: every step of the sequence at once.

Stage: backend (torch). Runs a `NewtonPlan` (`recc.lowering.newton`):

  hoisted    the state-free values for all steps, once (as the sequential loop)
  iterate    from the guess h^0_t = h_0: evaluate the step and its Jacobian's
             multipliers at every t against the previous iterate shifted one
             step (one vectorised evaluation of the IR over [B, T, ...]), then
             run the plan's linear spec `s_i = sum_j J_ij s_j + c_i` through
             the torch scan; stop when max|h^{k+1} - h^k| <= atol + rtol |h^{k+1}|
  outputs    the spec's outputs from the solution, vectorised

The solve is a `torch.autograd.Function`: no iteration is differentiated. Its
backward, at the solution h*, solves the adjoint `lambda_t = g_t + J_{t+1}^T
lambda_{t+1}` through the same scan (the plan's adjoint spec, time reversed;
with a quasi-Newton Jacobian, iterated on the remainder (J^T - D) lambda,
which the plan gives as a vector-Jacobian product) and then takes one
vector-Jacobian product of the step, evaluated at all t at once, for the
step's inputs (the hoisted values, and through them the spec's inputs), its
params and the initial states.

Safety, each case answered by the sequential loop with a `NewtonFallbackWarning`
(never an unconverged iterate):
  - expanding dynamics: along the first iterate the Jacobians grow a
    perturbation by more than e^GROWTH_LIMIT over the sequence (T times the
    largest mean log spectral radius of a channel's block): Newton would need
    about T iterations, and its scans multiply those growths;
  - a non-finite iterate (a diverging Newton, or NaN/inf in the call);
  - no convergence within `max_iterations` (T iterations always converge: step
    t is exact after t of them, so the cap only binds below T).
An adjoint that does not settle in as many iterations runs the reverse loop
(one vector-Jacobian product per step). `last_stats` says what happened.

`run(bound, forward="loop")` takes the states from the step loop instead of
iterating and keeps the adjoint backward: the loop's forward with Newton's
backward, what a CPU call that needs gradients runs. `NewtonOrLoop` is the
cost rule that picks, per call, between that, Newton and the plain loop.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from recc.backends.protocol import Call
from recc.backends.torch.scan import needs_grad, run_scan
from recc.backends.torch.sequential import SequentialLoop, _FastOps
from recc.ir.evaluate import align, evaluate, evaluate_shared
from recc.lowering import ScanPlan
from recc.lowering.newton import NewtonPlan
from recc.signature import Bound

# Stop when every element moved by at most atol + rtol * |new| in an iteration
# (DEER's rule). Newton converges quadratically near the root, so the answer is
# then much closer than this to the fixed point; quasi-Newton converges linearly,
# and is as close as its last move.
TOLERANCES = {torch.float64: (1e-11, 1e-11), torch.float32: (1e-6, 1e-6)}
# Iteration caps: exact Newton on contracting dynamics takes a handful; the
# diagonal of a dense Jacobian converges linearly and needs more.
MAX_ITERATIONS = {True: 32, False: 128}
# Largest growth e^G a perturbation may see over the sequence along the first
# iterate before the sequential loop is taken up front (about 3,000x).
GROWTH_LIMIT = 8.0


class NewtonFallbackWarning(UserWarning):
    """Newton did not converge on a call; the sequential loop answered it."""


@dataclass(frozen=True)
class NewtonStats:
    """What the latest call's solve did (`CompiledRecurrence.last_stats`)."""

    iterations: int  # Newton iterations run (0 when the loop ran from the start)
    converged: bool
    residual: float  # the last iteration's max |h^{k+1} - h^k| (nan if none)
    growth: float  # T * the largest mean log spectral radius of J along the first iterate
    fell_back: str | None = None  # why the sequential loop answered, if it did
    adjoint_iterations: int = 0  # the last backward's (1 with an exact Jacobian)
    changes: tuple[float, ...] = ()  # max |h^{k+1} - h^k| of each iteration
    forward: str = "newton"  # or "loop": the step loop's states, the adjoint backward


def torch_scan(facts: ScanPlan, bound: Bound) -> dict[str, torch.Tensor]:
    """The linear specs' outputs by the torch chunked scan."""
    outputs, _ = run_scan(facts, bound)
    return outputs


class NewtonSolver:
    """One spec's Newton solver; `__call__` runs one call like the other executors.

    `scan(facts, bound)` runs the plan's linear specs (their `ScanPlan`s) and returns
    their outputs: the torch chunked scan by default, a backend's kernels otherwise
    (the Triton backend passes its scan kernels). It is never differentiated."""

    def __init__(
        self,
        plan: NewtonPlan,
        loop: SequentialLoop,
        max_iterations: int | None = None,
        scan: Callable[[ScanPlan, Bound], dict[str, torch.Tensor]] = torch_scan,
    ):
        self.plan = plan
        self.loop = loop  # the fallback, and T = 0
        self.max_iterations = max_iterations or MAX_ITERATIONS[plan.exact]
        self.run_scan = scan
        self.last_stats: NewtonStats | None = None

    # -- one vectorised evaluation of the step ----------------------------------

    def _ops(self, bound: Bound) -> _FastOps:
        return _FastOps(bound.compute_dtype, bound.device)

    def _env(self, bound: Bound, values: dict, old: dict) -> dict:
        """Every name the step, its Jacobian and its adjoint read, at all steps."""
        step = self.plan.step
        env = {p.name: values[p.name] for p in step.params}
        env.update({i.name: values[i.name] for i in step.inputs})
        env.update({d: bound.params[d] for d in step.dim_values})
        for name, matrix in self.plan.diagonals.items():
            env[name] = torch.diagonal(env[matrix], dim1=-2, dim2=-1)
        env.update(old)
        ops = self._ops(bound)
        for let in step.lets:
            env[let.name] = evaluate(let.expr, env, ops)
        return env

    def _updates(self, bound: Bound, env: dict) -> dict[str, torch.Tensor]:
        ops = self._ops(bound)
        return {
            u.name: self._full(evaluate(u.expr, env, ops), u.expr.dims, bound)
            for u in self.plan.step.updates
        }

    def _multipliers(self, bound: Bound, env: dict) -> dict[str, torch.Tensor]:
        ops = self._ops(bound)
        dims = {s.name: s.dims for s in self.plan.step.states}
        found = {}
        for b in self.plan.blocks:
            value = evaluate(b.multiplier, env, ops)
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value, dtype=bound.compute_dtype, device=bound.device)
            if value.dim():
                value = align(value, b.multiplier.dims, dims[b.target])
            found[b.coefficient] = self._full(value, dims[b.target], bound)
        return found

    def _transposed(self, bound: Bound, env: dict, lam: dict) -> dict[str, torch.Tensor]:
        """J_t^T lambda_t at every t (quasi-Newton's adjoint), by the plan's VJP."""
        plan = self.plan
        env = {**env, **{plan.cotangents[n]: v for n, v in lam.items()}}
        names = list(plan.transposed)
        values = evaluate_shared([plan.transposed[n] for n in names], env, self._ops(bound))
        dims = {s.name: s.dims for s in plan.step.states}
        found = {n: torch.zeros_like(v) for n, v in lam.items()}
        for n, value in zip(names, values):
            if value.dim():
                value = align(value, plan.transposed[n].dims, dims[n])
            found[n] = self._full(value, dims[n], bound)
        return found

    @staticmethod
    def _full(value: torch.Tensor, dims, bound: Bound) -> torch.Tensor:
        shape = (bound.B, bound.T, *bound.batch_heads, *bound.shape_of(dims))
        return value.expand(shape) if tuple(value.shape) != shape else value

    # -- the linear recurrences -------------------------------------------------

    def _scan(self, facts: ScanPlan, bound: Bound, inputs: dict, start: dict) -> dict:
        linear = Bound(
            bound.B,
            bound.T,
            bound.H,
            bound.sizes,
            inputs,
            {},
            start,
            bound.compute_dtype,
            bound.compute_dtype,
            bound.device,
        )
        return self.run_scan(facts, linear)

    def _growth(self, J: dict[str, torch.Tensor], bound: Bound) -> float:
        """T * the largest mean_t log rho(J_t) (rho the spectral radius of each channel's
        k x k block; |J_t| for k = 1), along the first iterate: about how much the
        linearised dynamics stretch a perturbation over the whole sequence. NaN where a
        multiplier is not finite (the iterate then is not either: that check decides)."""
        by_pair = {(b.target, b.source): J[b.coefficient] for b in self.plan.blocks}
        if not all(bool(torch.isfinite(v).all()) for v in by_pair.values()):
            return math.nan
        worst = -math.inf
        for group in self.plan.scan.groups:
            names = group.states
            if len(names) == 1:
                size = by_pair.get((names[0], names[0]))
                if size is None:
                    continue
                radius = size.abs()
            else:  # sampled at <= 64 steps: eigenvalues of many small blocks are not free
                steps = torch.linspace(0, bound.T - 1, min(bound.T, 64), device=bound.device)
                at = steps.round().long()
                some = next(iter(by_pair.values()))
                zero = torch.zeros_like(some[:, at])
                rows = [
                    torch.stack([by_pair[t, s][:, at] if (t, s) in by_pair else zero
                                 for s in names], dim=-1)
                    for t in names
                ]  # fmt: skip
                radius = torch.linalg.eigvals(torch.stack(rows, dim=-2)).abs().amax(dim=-1)
            logs = torch.log(radius.clamp_min(1e-30)).mean(dim=1)
            worst = max(worst, float(logs.max()))
        return worst * bound.T

    # -- the solve --------------------------------------------------------------

    def solve(self, bound: Bound, values: dict) -> tuple[dict[str, torch.Tensor], NewtonStats]:
        """h*_t for t = 1..T, each `[B, T, (H), *dims]`, and how it was found."""
        plan = self.plan
        states = plan.step.states
        h0 = {s.name: self._start(bound, s) for s in states}
        current = {s.name: h0[s.name].unsqueeze(1).expand(self._shape(bound, s)) for s in states}
        rtol, atol = TOLERANCES.get(bound.compute_dtype, TOLERANCES[torch.float32])
        residual, growth = math.nan, math.nan
        changes: list[float] = []
        cap = min(self.max_iterations, bound.T)  # T iterations make every step exact
        for k in range(1, cap + 1):
            old = {n: shift(current[n], h0[n]) for n in current}
            env = self._env(bound, values, old)
            f = self._updates(bound, env)
            J = self._multipliers(bound, env)
            if k == 1:
                growth = self._growth(J, bound)
                if growth > GROWTH_LIMIT and bound.T > 1:
                    why = (
                        f"the Jacobians along the first iterate grow a perturbation by "
                        f"e^{growth:.3g} over the sequence (expanding dynamics)"
                    )
                    return self._fall_back(bound, values, 0, growth, why)
            offsets = {}
            for s in states:
                c = f[s.name]
                for b in plan.blocks:
                    if b.target == s.name:
                        c = c - J[b.coefficient] * old[b.source]
                offsets[plan.offsets[s.name]] = c
            new = self._scan(plan.scan, bound, {**J, **offsets}, h0)
            if not all(bool(torch.isfinite(new[n]).all()) for n in new):
                return self._fall_back(bound, values, k, growth, "a Newton iterate is not finite")
            residual = max(float((new[n] - current[n]).abs().max()) for n in new)
            changes.append(residual)
            done = _stop_ratio(new, current, rtol, atol) <= 1
            current = new
            if done or k == bound.T:
                return current, NewtonStats(k, True, residual, growth, changes=tuple(changes))
        why = f"no convergence in {cap} iterations (last change {residual:.3g})"
        return self._fall_back(bound, values, cap, growth, why, changes)

    def _fall_back(self, bound, values: dict, k: int, growth: float, why: str, changes=()):
        solution = self.loop.states(bound, {**bound.params, **values})
        return solution, NewtonStats(k, False, math.nan, growth, why, changes=tuple(changes))

    # -- the adjoint --------------------------------------------------------------

    def adjoint(self, bound: Bound, values: dict, old: dict, g: dict) -> tuple[dict, int]:
        """lambda_t = g_t + J_{t+1}^T lambda_{t+1} (lambda_{T+1} = 0) at every t, and the
        iterations it took (0: the reverse loop answered)."""
        plan = self.plan
        env = self._env(bound, values, old)
        J = self._multipliers(bound, env)
        # the adjoint spec runs on reversed time; its coefficient at t is step t+1's
        later = {c: _later(m).flip(1) for c, m in J.items()}
        zero = {n: torch.zeros_like(v[:, 0]) for n, v in g.items()}

        def solve(offsets: dict) -> dict:
            found = self._scan(
                plan.adjoint_scan,
                bound,
                {**later, **{plan.offsets[n]: v.flip(1) for n, v in offsets.items()}},
                zero,
            )
            return {n: v.flip(1) for n, v in found.items()}

        lam = solve(g)
        if plan.exact:
            return lam, 1
        # quasi-Newton: D stood in for J; the remainder (J^T - D^T) lambda from the
        # previous iterate moves to the offsets until lambda stops moving
        rtol, atol = TOLERANCES.get(bound.compute_dtype, TOLERANCES[torch.float32])
        for k in range(2, min(self.max_iterations, bound.T) + 2):
            full = self._transposed(bound, env, lam)
            offsets = {}
            for n in g:
                remainder = full[n]
                for b in plan.blocks:
                    if b.source == n:
                        remainder = remainder - J[b.coefficient] * lam[b.target]
                offsets[n] = g[n] + _later(remainder)
            new = solve(offsets)
            if not all(bool(torch.isfinite(v).all()) for v in new.values()):
                break
            done = _stop_ratio(new, lam, rtol, atol) <= 1
            lam = new
            if done:
                return lam, k
        return self._reverse_loop(bound, values, old, g), 0

    def _reverse_loop(self, bound: Bound, values: dict, old: dict, g: dict) -> dict:
        """The adjoint one step at a time: lambda_T = g_T, lambda_t = g_t +
        J_{t+1}^T lambda_{t+1} (each product the plan's VJP at step t+1)."""
        T = bound.T
        lam = {n: [None] * T for n in g}
        current = {n: v[:, T - 1] for n, v in g.items()}
        for t in range(T - 1, -1, -1):
            for n in g:
                lam[n][t] = current[n]
            if t == 0:
                break
            one = _one_step(bound)
            inputs = {i.name: values[i.name][:, t : t + 1] for i in self.plan.step.inputs}
            at = self._env(one, {**values, **inputs}, {n: v[:, t : t + 1] for n, v in old.items()})
            back = self._transposed(one, at, {n: v.unsqueeze(1) for n, v in current.items()})
            current = {n: g[n][:, t - 1] + back[n][:, 0] for n in g}
        return {n: torch.stack(v, dim=1) for n, v in lam.items()}

    # -- the call -----------------------------------------------------------------

    @staticmethod
    def _shape(bound: Bound, state) -> tuple[int, ...]:
        return (bound.B, bound.T, *bound.batch_heads, *bound.shape_of(state.dims))

    @staticmethod
    def _start(bound: Bound, state, value: torch.Tensor | None = None) -> torch.Tensor:
        """Initial state `[B, (H), *dims]` (`value`, or the call's)."""
        shape = (bound.B, *bound.batch_heads, *bound.shape_of(state.dims))
        value = bound.initial_state[state.name] if value is None else value
        return value.expand(shape) if tuple(value.shape) != shape else value

    def __call__(self, call):
        return self.run(call.bound)

    def run(self, bound: Bound, forward: str = "newton"):
        """One call. `forward="loop"`: the states by the step loop (no autograd graph),
        the backward still by the adjoint: the loop's forward with Newton's backward."""
        if bound.T == 0:
            return self.loop(bound)
        values = self.loop.hoist(bound)
        step = self.plan.step
        names = [i.name for i in step.inputs] + [p.name for p in step.params]
        h0 = [bound.initial_state[s.name] for s in step.states]
        solved = _Solve.apply(self, bound, names, forward, *h0, *(values[n] for n in names))
        stats = self.last_stats
        if stats is not None and stats.fell_back:
            warnings.warn(  # at the user's fn(...): api -> the cost rule -> __call__ -> here
                f"Newton on '{self.plan.step.name}': {stats.fell_back}; the sequential "
                "loop answers this call",
                NewtonFallbackWarning,
                stacklevel=5,
            )
        current = dict(zip((s.name for s in step.states), solved))
        starts = {s.name: self._start(bound, s) for s in step.states}
        old = {n: shift(current[n], starts[n]) for n in current}
        env = self._env(bound, values, old)
        ops = self._ops(bound)
        out_env = {**env, **current}
        outputs = {}
        for o in step.outputs:
            value = evaluate(o.expr, out_env, ops)
            full = (bound.B, bound.T, *bound.batch_heads, *bound.shape_of(o.expr.dims))
            value = value.expand(full) if tuple(value.shape) != full else value
            outputs[o.name] = value.to(bound.out_dtype)
        finals = {n: v[:, -1] for n, v in current.items()}
        if self.plan.unread:
            finals.update(self._last_step(bound, values, old))
        return outputs, finals

    def _last_step(self, bound: Bound, values: dict, old: dict) -> dict[str, torch.Tensor]:
        """The final of each state nothing reads, from its update at the last step alone."""
        one = _one_step(bound)
        inputs = {i.name: values[i.name][:, -1:] for i in self.plan.step.inputs}
        env = self._env(one, {**values, **inputs}, {n: v[:, -1:] for n, v in old.items()})
        ops = self._ops(one)
        return {
            u.name: self._full(evaluate(u.expr, env, ops), u.expr.dims, one)[:, 0]
            for u in self.plan.step.updates
            if u.name in self.plan.unread
        }


# The cost rule between Newton and the step loop, per call (`NewtonOrLoop`).
# On a GPU: Newton from this length. The loop is launch bound there (about 20 kernels a
# step) and Newton's few iterations of a few dozen kernels plus a scan of depth
# O(sqrt T) (torch) or O(log T) (a scan kernel) win from T of about 100: an estimate
# from launch counts, not yet timed on a GPU.
NEWTON_FROM_T = 128
# On a CPU (`python benchmarks/newton.py --crossover`, B=4, D=128): the loop's forward
# is faster than Newton's at every T (a Newton iteration is some fifty bandwidth-bound
# passes over [B, T, D] in eager torch). For the backward, the adjoint at the loop's
# states is one scan and one vectorised VJP with an exact Jacobian, faster than the
# loop's generated reverse loop from T = 32 on: a call that needs gradients then runs
# the loop's forward with the adjoint backward (ParaGRU 1.5x at T=32, 2.3x at 2048;
# ParaLSTM 1.0x and 1.8x; IndRNN 1.05x and 2.3x). A quasi-Newton adjoint iterates (11-23
# times for torch.nn's initialisations of GRU, LSTM and Elman at D=128) and the reverse
# loop beats it at every T measured (GRU 0.4-0.9x, LSTM 0.4-0.9x): None, the loop.
ADJOINT_FROM_T: dict[bool, int | None] = {True: 32, False: None}  # by NewtonPlan.exact
LOOP, ADJOINT, NEWTON = "the step loop", "the loop's forward, the adjoint backward", "Newton"


def cost_rule(plan: NewtonPlan, always: bool) -> str:
    """`NewtonOrLoop`'s rule, in words (`recc explain`)."""
    if always:
        return "Newton at every T, on every device (strategy='newton')"
    cpu = ADJOINT_FROM_T[plan.exact]
    adjoint = (
        f"CPU tensors, calls that need gradients with T >= {cpu}: the loop's forward with "
        "Newton's adjoint backward (faster than the loop's reverse loop); "
        if cpu is not None
        else ""
    )
    return f"CUDA tensors and T >= {NEWTON_FROM_T}: Newton; {adjoint}otherwise the step loop"


class NewtonOrLoop:
    """The cost rule between the Newton solver and the step loop, per call."""

    def __init__(self, solver: NewtonSolver, always: bool) -> None:
        self.solver, self.loop, self.always = solver, solver.loop, always
        self.adjoint_from_T = ADJOINT_FROM_T[solver.plan.exact]
        self.ran = LOOP  # what the latest call ran

    @property
    def last_stats(self) -> NewtonStats | None:
        """The solver's record of the latest call (its backward's too), if it ran it."""
        return None if self.ran == LOOP else self.solver.last_stats

    def choose(self, bound: Bound) -> str:
        if self.always:
            return NEWTON
        if bound.device.type == "cuda":
            return NEWTON if bound.T >= NEWTON_FROM_T else LOOP
        cpu = self.adjoint_from_T
        return ADJOINT if cpu is not None and bound.T >= cpu and needs_grad(bound) else LOOP

    def __call__(self, call: Call):
        self.ran = self.choose(call.bound)
        if self.ran == LOOP:
            return self.loop(call.bound)
        return self.solver.run(call.bound, forward="loop" if self.ran == ADJOINT else "newton")


def _stop_ratio(new: dict, old: dict, rtol: float, atol: float) -> float:
    """The largest change of an iteration in units of the tolerance: <= 1 is converged."""
    return max(float(((new[n] - old[n]).abs() / (atol + rtol * new[n].abs())).max()) for n in new)


def shift(sequence: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """[h_0, h_1, ..., h_{T-1}] from [h_1, ..., h_T] and h_0: each step's old state."""
    return torch.cat([start.unsqueeze(1), sequence[:, :-1]], dim=1)


def _later(sequence: torch.Tensor) -> torch.Tensor:
    """[x_2, ..., x_T, 0] from [x_1, ..., x_T]: each step's successor's value."""
    return torch.cat([sequence[:, 1:], torch.zeros_like(sequence[:, :1])], dim=1)


def _one_step(bound: Bound) -> Bound:
    """`bound`'s shapes and params at T = 1."""
    return replace(bound, T=1, inputs={}, initial_state={})


class _Solve(torch.autograd.Function):
    """h* from (initial states, the step's inputs, its params); backward by the adjoint."""

    @staticmethod
    def forward(ctx, solver: NewtonSolver, bound: Bound, names: list[str], how: str, *tensors):
        step = solver.plan.step
        n_states = len(step.states)
        values = dict(zip(names, tensors[n_states:]))
        with torch.no_grad():
            if how == "loop":
                solution = solver.loop.states(bound, {**bound.params, **values})
                stats = NewtonStats(0, True, math.nan, math.nan, forward="loop")
            else:
                solution, stats = solver.solve(bound, values)
        solver.last_stats = stats
        ordered = tuple(solution[s.name].contiguous() for s in step.states)
        ctx.solver, ctx.bound, ctx.names = solver, bound, names
        ctx.save_for_backward(*tensors, *ordered)
        return ordered

    @staticmethod
    def backward(ctx, *grads):
        solver, bound, names = ctx.solver, ctx.bound, ctx.names
        step = solver.plan.step
        saved = ctx.saved_tensors
        n_states = len(step.states)
        h0_list = saved[:n_states]
        inputs = saved[n_states : len(saved) - n_states]
        solution = dict(zip((s.name for s in step.states), saved[len(saved) - n_states :]))
        g = {
            s.name: torch.zeros(
                solver._shape(bound, s), dtype=bound.compute_dtype, device=bound.device
            )
            if d is None
            else d
            for s, d in zip(step.states, grads)
        }
        starts = {s.name: solver._start(bound, s, h) for s, h in zip(step.states, h0_list)}
        old = {n: shift(solution[n], starts[n]) for n in solution}
        with torch.no_grad():
            lam, k = solver.adjoint(bound, dict(zip(names, inputs)), old, g)
        if solver.last_stats is not None:
            solver.last_stats = _with_adjoint(solver.last_stats, k)
        with torch.enable_grad():
            leaves_h0 = [h.detach().requires_grad_(h.requires_grad) for h in h0_list]
            leaves = [v.detach().requires_grad_(v.requires_grad) for v in inputs]
            starts = {s.name: solver._start(bound, s, h) for s, h in zip(step.states, leaves_h0)}
            old = {n: shift(solution[n].detach(), starts[n]) for n in solution}
            env = solver._env(bound, dict(zip(names, leaves)), old)
            f = solver._updates(bound, env)
            # a state nothing reads has a zero adjoint, and its update's local
            # derivatives may be infinite (0 * inf): it stays out, as in the loop
            terms = [(f[n] * lam[n]).sum() for n in f if n not in solver.plan.unread]
            leaves_all = (*leaves_h0, *leaves)
            wanted = [t for t in leaves_all if t.requires_grad]
            found = iter(
                torch.autograd.grad(sum(terms), wanted, allow_unused=True)
                if wanted and terms
                else [None] * len(wanted)
            )
            result = [next(found) if t.requires_grad else None for t in leaves_all]
        return (None, None, None, None, *result)


def _with_adjoint(stats: NewtonStats, k: int) -> NewtonStats:
    return replace(stats, adjoint_iterations=k)

"""The sequential form in torch: state-free work for all steps at once, then a
printed step in a time loop.

Stage: backend (torch). Runs a `SequentialPlan` (`recc.lowering.sequential`):

  hoisted   each state-free value evaluated once over the whole sequence
            (`[B, T, ...]`: the input projections become one matrix multiply
            over B*T rows) or once per call (params only);
  stacked   the step's matrix-vector products of a param with the same state,
            `W_hr @ h`, `W_hz @ h`, `W_hn @ h`, become one product with the
            params stacked row-wise (computed once per call), split after;
  loop      the rest of the step printed as torch source (comments citing the
            spec's lines), called once per step.

A call that needs gradients runs the loop without a graph and its backward by
the generated reverse loop (`reverse.py`); `run` is the loop with autograd
through it (forward-only calls, and the reference). The loop is what the
interpreter runs minus the hoisted work, with the same ops on the same values,
so outputs agree with it to rounding (a stacked product sums in the same
order; a matrix multiply over B*T rows may block its sums differently).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch._dynamo.exc import TorchDynamoException
from torch._inductor.exc import InductorError

from recc.backends.names import Namespace
from recc.backends.torch.printer import MODULE_NAMES, _cite, _Printed, _Printer
from recc.backends.torch.scan import needs_grad
from recc.errors import RecError
from recc.interpreter import TorchOps
from recc.ir import ties
from recc.ir.evaluate import evaluate
from recc.ir.nodes import PARAM, STATE, Apply, Expr, Recurrence, Ref, walk
from recc.lowering.sequential import SequentialPlan
from recc.signature import Bound


def matvec(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`weight @ x` for a param `[(H), M, K]` and vectors `[..., (H), K]`."""
    if weight.dim() == 2:
        return torch.nn.functional.linear(x, weight)
    return (weight @ x.unsqueeze(-1)).squeeze(-1)


class _FastOps(TorchOps):
    """The interpreter's ops, with a param matrix times vectors as one `linear`
    (over every leading axis at once: B*T rows for a hoisted input projection)."""

    def apply(self, node: Apply, args: list) -> torch.Tensor:
        if node.op == "matmul" and _param_matvec(node) and args[0].dim() == 2:
            return torch.nn.functional.linear(args[1], args[0])
        return super().apply(node, args)


def _param_matvec(node: Expr) -> bool:
    """A matrix of params (no input, no state) times a vector."""
    if not (isinstance(node, Apply) and node.op == "matmul"):
        return False
    a, b = node.args
    return len(a.dims) == 2 and len(b.dims) == 1


@dataclass(frozen=True)
class Stacked:
    """Products `W_i @ x` of params with one state-reading vector `x`, done as one."""

    name: str  # the stacked param's name in the printed step
    weights: tuple[str, ...]  # param names, stacked along rows in this order
    rows: tuple[str, ...]  # each weight's row dim (their sizes split the product)
    operand: Ref  # a state: the products come first in the step
    nodes: tuple[Apply, ...]


def _stacked(step: Recurrence) -> tuple[Stacked, ...]:
    """Group the step's param-matrix-times-state products by the state."""
    groups: dict[str, list[Apply]] = {}
    for d in (*step.lets, *step.updates):
        for node in walk(d.expr):
            if not _param_matvec(node):
                continue
            w, x = node.args
            if isinstance(w, Ref) and w.role == PARAM and isinstance(x, Ref) and x.role == STATE:
                found = groups.setdefault(x.name, [])
                if node not in found:
                    found.append(node)
    return tuple(
        Stacked(
            f"stacked {name}",
            tuple(n.args[0].name for n in nodes),
            tuple(n.args[0].dims[0] for n in nodes),
            nodes[0].args[1],
            tuple(nodes),
        )
        for name, nodes in groups.items()
    )


class _StepPrinter(_Printer):
    """The torch printer, with some nodes already computed into locals and a param
    matrix times a vector as `matvec`."""

    def __init__(self, names: dict[str, str], like: str, nodes: dict[Expr, str]) -> None:
        super().__init__(names, like)
        self.nodes = nodes

    def expr(self, expr: Expr) -> _Printed:
        if expr in self.nodes:
            return _Printed(self.nodes[expr], 4)
        if _param_matvec(expr):
            w, x = (self.expr(a).text for a in expr.args)
            return _Printed(f"matvec({w}, {x})", 4)
        return super().expr(expr)


def needs_reverse(bound: Bound) -> bool:
    """Whether a call runs the reverse loop: it needs gradients and has steps."""
    return bound.T > 0 and needs_grad(bound)


def _spelling(name: str) -> str:
    return name.replace(" ", "_")


def print_stacked(
    stacked: tuple[Stacked, ...], names: dict[str, str], ns: Namespace, nodes: dict[Expr, str]
) -> list[str]:
    """The lines computing each group's stacked product and splitting it; each product
    node's local goes into `nodes`, where the printer finds it."""
    lines = []
    for g in stacked:
        product = ns.fresh("_w")
        lines.append(f"    # {', '.join(g.weights)} times {g.operand.name}, as one product")
        lines.append(f"    {product} = matvec({names[g.name]}, {names[g.operand.name]})")
        sizes = ", ".join(f"{names[w]}.shape[-2]" for w in g.weights)
        parts = [ns.fresh("_p") for _ in g.nodes]
        lines.append(f"    {', '.join(parts)}, = {product}.split([{sizes}], dim=-1)")
        nodes.update(zip(g.nodes, parts))
    return lines


def print_loop_step(step: Recurrence, stacked: tuple[Stacked, ...]) -> tuple[str, list[str]]:
    """(source, parameter names in order) of `def step(...)`: one step of the
    sequential form, the stacked products first."""
    module = Namespace((*MODULE_NAMES, "matvec"))
    ns = module.child()
    params = [
        *(i.name for i in step.inputs),
        *(p.name for p in step.params),
        *step.dim_values,
        *(g.name for g in stacked),
        *(s.name for s in step.states),
    ]
    names = {n: ns.name(("arg", n), _spelling(n)) for n in params}
    lines = [
        f"def step({', '.join(names[n] for n in params)}):",
        f'    """One step of `{step.name}` with its state-free work hoisted out of the loop."""',
    ]
    nodes: dict[Expr, str] = {}
    lines += print_stacked(stacked, names, ns, nodes)
    like = names[step.inputs[0].name]
    printer = _StepPrinter(names, like, nodes)
    for let in step.lets:
        local = ns.name(("let", let.name), let.name)
        lines += [f"    {_cite(step, let.span)}", f"    {local} = {printer.top(let.expr)}"]
        names[let.name] = local
    new = {}
    for u in step.updates:
        new[u.name] = ns.name(("new", u.name), f"{u.name}_new")
        lines += [f"    {_cite(step, u.span)}", f"    {new[u.name]} = {printer.top(u.expr)}"]
    out_printer = _StepPrinter({**names, **new}, like, {})
    outs = []
    for o in step.outputs:
        local = ns.name(("out", o.name), o.name)
        lines += [f"    {_cite(step, o.span)}", f"    {local} = {out_printer.top(o.expr)}"]
        outs.append(local)
    states = ", ".join(new[s.name] for s in step.states)
    lines.append(f"    return ({states},), ({', '.join(outs)},)")
    return "\n".join(lines), params


def _guarded(step, name: str):
    """`step` with torch.compile's own failures as RecErrors that say how to go on."""

    def run(*args):
        try:
            return step(*args)
        except (TorchDynamoException, InductorError) as err:
            text = str(err).strip()
            first = text.splitlines()[0] if text else type(err).__name__
            raise RecError(
                f"torch.compile failed for '{name}': {first}",
                hint="call recc.compile(..., torch_compile=False) to run the same loop eagerly "
                "(torch.compile on a CPU needs a working C++ compiler)",
            ) from err

    return run


class SequentialLoop:
    """A plan's printed step, made once; `__call__` runs one call."""

    def __init__(self, plan: SequentialPlan, compiled: bool = False) -> None:
        self.plan = plan
        self.stacked = _stacked(plan.step)
        self.source, self.parameters = print_loop_step(plan.step, self.stacked)
        scope = {"torch": torch, "maximum": ties.maximum, "minimum": ties.minimum, "matvec": matvec}
        exec(compile(self.source, f"<sequential step of {plan.spec.name}>", "exec"), scope)  # noqa: S102
        self.step = scope["step"]
        self._reverse = None  # the generated reverse loop, made on first use
        self._ops: dict[tuple, _FastOps] = {}  # by (dtype, device): their constants, once
        self._stacks: dict[str, tuple] = {}  # a group's stacked weights and what they were
        if compiled:  # the step's elementwise work fused by inductor, once per shape
            self.step = _guarded(torch.compile(self.step, dynamic=False), plan.spec.name)

    def hoist(self, bound: Bound) -> dict[str, torch.Tensor]:
        """The spec's params and inputs, and every hoisted value, by name."""
        key = (bound.compute_dtype, bound.device)
        if key not in self._ops:
            self._ops[key] = _FastOps(bound.compute_dtype, bound.device)
        ops = self._ops[key]
        env: dict[str, torch.Tensor] = {**bound.params, **bound.inputs}
        for h in self.plan.hoisted:
            env[h.name] = evaluate(h.expr, env, ops)
        return env

    def _steps(self, bound: Bound, env: dict[str, torch.Tensor]):
        """Each step's (new states, outputs), in order."""
        step, run_step = self.plan.step, self.step
        env = dict(env)
        for g in self.stacked:
            env[g.name] = self._stack(g, [env[w] for w in g.weights])
        n_in = len(step.inputs)
        per_step = [env[i.name] for i in step.inputs]
        fixed = [env[n] for n in self.parameters[n_in : len(self.parameters) - len(step.states)]]
        states = [bound.initial_state[s.name] for s in step.states]
        for t in range(bound.T):
            new, out = run_step(*(x[:, t] for x in per_step), *fixed, *states)
            states = list(new)
            yield states, out

    def _stack(self, group: Stacked, weights: list[torch.Tensor]) -> torch.Tensor:
        """The group's weights stacked row-wise, kept while they are the same tensors
        unmodified (a decoding loop calls with the same weights every token; an
        in-place update bumps a tensor's version and restacks)."""
        kept = self._stacks.get(group.name)
        if (
            kept is not None
            and not torch.is_grad_enabled()
            and len(kept[0]) == len(weights)
            and all(r() is w and v == w._version for (r, v), w in zip(kept[0], weights))
        ):  # weak references: a freed weight's successor at its address is not it
            return kept[1]
        stacked = torch.cat(weights, dim=-2)
        self._stacks[group.name] = (tuple((weakref.ref(w), w._version) for w in weights), stacked)
        return stacked

    def one_step(self, bound: Bound) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The step of a call with T = 1: (outputs, new states), without a time axis
        and as the step computes them (not yet broadcast to their full shapes)."""
        ((new, out),) = self._steps(bound, self.hoist(bound))
        return list(out), new

    def _full(self, value: torch.Tensor, bound: Bound, dims) -> torch.Tensor:
        shape = (bound.B, *bound.batch_heads, *bound.shape_of(dims))
        return value.expand(shape) if tuple(value.shape) != shape else value

    def states(self, bound: Bound, env: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every step's new states, `[B, T, (H), *dims]` (T >= 1)."""
        kept: list[list[torch.Tensor]] = [[] for _ in self.plan.step.states]
        for states, _ in self._steps(bound, env):
            for k, s, v in zip(kept, self.plan.step.states, states):
                k.append(self._full(v, bound, s.dims))
        return {s.name: torch.stack(k, dim=1) for s, k in zip(self.plan.step.states, kept)}

    def __call__(self, bound: Bound) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Outputs and finals; a call that needs gradients runs the forward without a
        graph and the backward by the generated reverse loop (`reverse.py`)."""
        if needs_reverse(bound):
            if self._reverse is None:
                from recc.backends.torch.reverse import ReverseLoop

                self._reverse = ReverseLoop(self)
            return self._reverse(bound)
        return self.run(bound)

    def run(self, bound: Bound) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The loop as it is, autograd through it (the reference of the reverse loop)."""
        step = self.plan.step
        outs: list[list[torch.Tensor]] = [[] for _ in step.outputs]
        last = [bound.initial_state[s.name] for s in step.states]  # the finals at T = 0
        for new, out in self._steps(bound, self.hoist(bound)):
            last = new
            for kept, value in zip(outs, out):
                kept.append(value)
        outputs = {}
        for o, kept in zip(step.outputs, outs):
            shape = (bound.B, *bound.batch_heads, *bound.shape_of(o.expr.dims))
            if kept:
                full = [v.expand(shape) if tuple(v.shape) != shape else v for v in kept]
                outputs[o.name] = torch.stack(full, dim=1).to(bound.out_dtype)
            else:
                outputs[o.name] = torch.zeros(
                    (shape[0], 0, *shape[1:]), dtype=bound.out_dtype, device=bound.device
                )
        finals = {s.name: self._full(v, bound, s.dims) for s, v in zip(step.states, last)}
        return outputs, finals

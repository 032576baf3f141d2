"""The IR's derivative engine (recc.ir.autodiff) against torch's autograd.

On hypothesis-drawn specs (every class's generator, and random expressions of
every operator and shape), one step evaluated by the interpreter's TorchOps:

  vjp: the cotangents of inputs, params (summed over the batch by
       `sum_steps`), old states and lets equal torch.autograd.grad's;
  jvp: the tangent equals torch.func.jvp's (where neither overflows: the
       engine's tangents use the reverse-mode formulas, torch's forward mode
       its own, e.g. -t * a / b**2 for a / b);
  state_jacobian: a DIAGONAL block's multiplier times a tangent is the jvp,
       and torch's full Jacobian is diagonal with those entries; a DENSE
       block's tangent is the jvp.

fp64; values where autograd's are not finite must be the same non-finite
values (NaN where torch has NaN).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st
from torch.func import jvp as torch_jvp

from recc.analysis.rewrite import fold
from recc.interpreter import TorchOps
from recc.ir import load
from recc.ir.autodiff import COTANGENT, TANGENT, Structure, jvp, state_jacobian, vjp
from recc.ir.evaluate import align, evaluate
from recc.ir.nodes import Apply, Const, Recurrence, Ref, walk
from recc.testing.strategies import CLASSES, expression_spec, spec_of, step_env
from tests.helpers.profiles import FAST, SLOW

OPS = TorchOps(torch.float64, torch.device("cpu"))


def _with_lets(rec: Recurrence, env: dict) -> dict:
    env = dict(env)
    for let in rec.lets:
        env[let.name] = evaluate(let.expr, env, OPS)
    return env


def _leaves(rec: Recurrence) -> list[str]:
    return [d.name for d in (*rec.inputs, *rec.params, *rec.states)]


def _dims(rec: Recurrence) -> dict[str, tuple[str, ...]]:
    return {d.name: d.dims for d in (*rec.inputs, *rec.value_params(), *rec.states)}


def _close(got: torch.Tensor, want: torch.Tensor, reassociated: bool = False) -> None:
    """`reassociated`: `got` is the same math in another order (a multiplier times a
    tangent), so where either side is beyond 1e300 or not finite (an overflow one
    order has and the other has not) the values are not compared."""
    got = got.expand_as(want) if got.shape != want.shape else got
    if reassociated:
        keep = (got.abs() < 1e300) & (want.abs() < 1e300)
        got, want = got[keep], want[keep]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12, equal_nan=True)


def _varying(expr, fixed: set[str]) -> bool:
    """Whether `expr` differs from step to step: it reads a name outside `fixed`
    other than under a sum over the steps."""
    if isinstance(expr, Ref):
        return expr.name not in fixed
    if isinstance(expr, Apply) and expr.op != "sum_steps":
        return any(_varying(a, fixed) for a in expr.args)
    return False


def _sums_of_steps_vary(expr, fixed: set[str]) -> None:
    """Each `sum_steps` sums a value that varies (summing a step-invariant value
    again would multiply it by the number of steps; one step at a time hides it)."""
    for node in walk(expr):
        if isinstance(node, Apply) and node.op == "sum_steps":
            assert _varying(node.args[0], fixed), f"sum over the steps of a fixed value: {node}"


def check_vjp(rec: Recurrence, data) -> None:
    env = data.draw(step_env(rec), label="env")
    leaves = {n: env[n].clone().requires_grad_() for n in _leaves(rec)}
    full = _with_lets(rec, {**env, **leaves})
    lets = {let.name: let.expr for let in rec.lets}
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    seeds, values, cts = [], [], {}
    for u in rec.updates:
        value = evaluate(u.expr, full, OPS)
        value = torch.broadcast_to(value, env[u.name].shape)  # a state is [B, *dims]
        ct = torch.randn(value.shape, generator=gen, dtype=torch.float64)
        seeds.append((u.expr, Ref(u.expr.dims, f"d {u.name}", COTANGENT)))
        values.append(value)
        cts[f"d {u.name}"] = ct
    params = {d.name for d in rec.value_params()}
    found = vjp(seeds, lets, varies=lambda n: n not in params)
    want = torch.autograd.grad(
        values,
        list(leaves.values()),
        [cts[f"d {u.name}"] for u in rec.updates],
        allow_unused=True,
    )
    scope = {**{k: v.detach() for k, v in full.items()}, **cts}
    for name, w in zip(leaves, want):
        expr = found.of(name)
        note(f"cotangent of {name}: {expr}")
        if expr is not None:
            _sums_of_steps_vary(expr, params)
        if expr is None:
            assert w is None or not w.any(), name  # torch: unused, or exactly zero
            continue
        got = evaluate(expr, scope, OPS)
        if w is None:  # torch saw no use; the engine's terms must then be zero
            assert not got.any(), name
            continue
        _close(got, w)


def check_jvp(rec: Recurrence, data) -> None:
    env = data.draw(step_env(rec), label="env")
    names = _leaves(rec)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    moving = data.draw(st.sets(st.sampled_from(names), min_size=1), label="moving")
    tangents = {n: torch.randn(env[n].shape, generator=gen, dtype=torch.float64) for n in moving}
    lets = {let.name: let.expr for let in rec.lets}
    dims = _dims(rec)
    refs = {n: Ref(dims[n], f"t {n}", TANGENT) for n in moving}
    fixed = {k: v for k, v in env.items() if k not in moving}

    def updates(*values):
        full = _with_lets(rec, {**fixed, **dict(zip(sorted(moving), values))})
        return tuple(
            torch.broadcast_to(evaluate(u.expr, full, OPS), env[u.name].shape) for u in rec.updates
        )

    primals = tuple(env[n] for n in sorted(moving))
    _, want = torch_jvp(updates, primals, tuple(tangents[n] for n in sorted(moving)))
    scope = {**_with_lets(rec, env), **{f"t {n}": t for n, t in tangents.items()}}
    for u, w in zip(rec.updates, want):
        expr = jvp(u.expr, refs, lets)
        note(f"tangent of {u.name}: {expr}")
        if expr is None:
            assert not w.any(), u.name
            continue
        got = align(evaluate(expr, scope, OPS), expr.dims, u.expr.dims)
        _close(got, w, reassociated=True)  # torch's forward mode has formulas of its own


def check_jacobian(rec: Recurrence, data) -> None:
    env = data.draw(step_env(rec, max_B=1), label="env")
    lets = {let.name: let.expr for let in rec.lets}
    states = {s.name: s.dims for s in rec.states}
    blocks = state_jacobian([(u.name, u.expr) for u in rec.updates], states, lets)
    scope = _with_lets(rec, env)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    for block in blocks:
        note(f"{block.target} <- {block.source}: {block.structure}")
        source = env[block.source]
        update = rec.update_of(block.target)
        shape = env[block.target].shape

        def f(s, update=update, block=block, shape=shape):
            full = _with_lets(rec, {**env, block.source: s})
            return torch.broadcast_to(evaluate(update, full, OPS), shape)

        t = torch.randn(source.shape, generator=gen, dtype=torch.float64)
        _, want = torch_jvp(f, (source,), (t,))
        if block.structure is Structure.DIAGONAL:
            multiplier = evaluate(block.value, scope, OPS)
            multiplier = align(multiplier, block.value.dims, states[block.source])
            _close(multiplier * t, want, reassociated=True)
            jac = torch.autograd.functional.jacobian(f, source)  # [1, *dims, 1, *dims]
            n = source.numel()
            square = jac.reshape(n, n)
            off = square - torch.diag(torch.diagonal(square))
            assert not off[~off.isnan()].any(), "a DIAGONAL block has off-diagonal entries"
            entries = torch.broadcast_to(multiplier, source.shape).reshape(-1)
            _close(entries, torch.diagonal(square))
        else:
            got = evaluate(block.value, {**scope, block.tangent: t}, OPS)
            _close(align(got, block.value.dims, states[block.target]), want, reassociated=True)
    # a block is absent only where the update does not read the source at all
    present = {(b.target, b.source) for b in blocks}
    for u in rec.updates:
        for s in rec.states:
            if (u.name, s.name) not in present:
                assert jvp(u.expr, {s.name: Const((), 1.0)}, lets) is None


CHECKS = {"vjp": check_vjp, "jvp": check_jvp, "jacobian": check_jacobian}


KINDS = [*CLASSES, "expressions"]


def _property(check: str, kind: str, profile) -> None:
    specs = expression_spec() if kind == "expressions" else spec_of(kind).map(lambda c: c[0])

    @profile
    @given(specs, st.data())
    def prop(source, data):
        note(source)
        CHECKS[check](load(source), data)

    prop()


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("kind", KINDS)
def test_against_autograd(check, kind):
    _property(check, kind, FAST)


@pytest.mark.slow
@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("kind", KINDS)
def test_against_autograd_slow(check, kind):
    _property(check, kind, SLOW)


def test_diagonal_specs_have_diagonal_jacobians():
    """Every zoo-style diagonal spec's Jacobian is diagonal, with the coefficient
    the classifier reads (same expression after folding), and a matrix-vector
    product of the state is DENSE."""
    rec = load(
        """recurrence r {
          dims D
          input x[D], z[D]
          param W[D, D], a[D]
          state h[D] = 0
          state c[D] = 0
          let f = sigmoid(z) * exp(-exp(a))
          update h = f * h + (1 - f) * x
          update c = tanh(W @ c + x)
          output y = h + c
        }"""
    )
    lets = {let.name: let.expr for let in rec.lets}
    states = {s.name: s.dims for s in rec.states}
    blocks = {
        (b.target, b.source): b
        for b in state_jacobian([(u.name, u.expr) for u in rec.updates], states, lets)
    }
    assert set(blocks) == {("h", "h"), ("c", "c")}
    assert blocks[("h", "h")].structure is Structure.DIAGONAL
    assert fold(blocks[("h", "h")].value) == Ref(("D",), "f", "let")
    assert blocks[("c", "c")].structure is Structure.DENSE


def test_derivatives_cite_the_spec_lines_they_come_from():
    """Every node the engine builds carries the span of the node it differentiates
    (or, for a seed, of the seeded value), so generated code can cite spec lines."""
    rec = load(
        """recurrence r {
          dims D
          input x[D]
          param a[D]
          state h[D] = 0
          let f = sigmoid(a) * exp(x)
          update h = f * tanh(h) + max(x, h)
          output h
        }"""
    )
    lets = {let.name: let.expr for let in rec.lets}
    update = rec.update_of("h")
    found = vjp([(update, Ref(update.dims, "g", COTANGENT))], lets)
    tangent = jvp(update, {"h": Ref(("D",), "t", TANGENT)}, lets)
    lines = {6, 7}  # the let's and the update's (the text's first line is `recurrence r {`)
    for expr in [*found.names.values(), tangent]:
        for node in walk(expr):
            if isinstance(node, Apply):
                assert node.span is not None, node
                assert node.span.line in lines, node.span


def test_the_rules_own_ops_are_not_differentiated_again():
    """A derivative's selections and sums have no rules: asking is an error, not a
    silently wrong second derivative."""
    from recc.ir.autodiff import NoDerivative

    x = Ref(("D",), "x", "input")
    picked = Apply(("D",), "select", (Apply(("D",), "gt", (x, Const((), 0.0))), x, x))
    with pytest.raises(NoDerivative):
        jvp(picked, {"x": Const((), 1.0)})
    with pytest.raises(NoDerivative):
        vjp([(Apply(("D",), "sum_steps", (x,)), Ref(("D",), "g", COTANGENT))])

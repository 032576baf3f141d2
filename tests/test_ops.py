"""The op table (recc.ir.ops): every op's derivative rule against torch autograd,
and every consumer (the Triton printer, the language docs) covering every op."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from recc.backends.triton.tile import PRINT
from recc.interpreter import TorchOps
from recc.ir.evaluate import evaluate
from recc.ir.nodes import Apply, Const, Ref
from recc.ir.ops import ELEMENTWISE, INTERNAL, OPS, SPELLED, Kind

DOCS = Path(__file__).parent.parent / "docs" / "language.md"
INF, NAN = float("inf"), float("nan")
VALUES = [0.0, -0.0, 1e-300, 0.3, -0.7, 1.0, -1.0, 2.5, -3.0, 19.99, 20.0, 20.5, 40.0, -40.0]
VALUES += [700.0, -800.0, INF, -INF, NAN]
EXPONENTS = [0.0, 1.0, 2.0, -1.0, 0.5, -0.5, 1.5, 3.0, 1 / 3]


def _cases(op: str):
    if op == "pow":
        return [((x,), p) for x in VALUES for p in EXPONENTS]
    if OPS[op].arity == 2:
        return [((a, b), None) for a in VALUES for b in VALUES]
    return [((x,), None) for x in VALUES]


@pytest.mark.parametrize("op", sorted(ELEMENTWISE))
def test_each_derivative_rule_is_torch_autograd(op):
    """The table's vjp, evaluated as IR, gives what autograd gives through the op's
    torch function: the same numbers, and NaN exactly where autograd has NaN."""
    ops = TorchOps(torch.float64, torch.device("cpu"))
    for values, exponent in _cases(op):
        leaves = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in values]
        refs = tuple(Ref((), f"x{i}", "input") for i in range(len(leaves)))
        args = refs + ((Const((), exponent),) if exponent is not None else ())
        node = Apply((), op, args)
        env = {r.name: leaf for r, leaf in zip(refs, leaves)}
        out = evaluate(node, env, ops)
        for g_value in (1.0, -0.5, 0.0):
            g = torch.tensor(g_value, dtype=torch.float64)
            want = torch.autograd.grad(out, leaves, g, retain_graph=True, allow_unused=True)
            cotangent = Ref((), "g", "cotangent")
            rules = OPS[op].vjp(cotangent, args, node)
            with torch.no_grad():
                for i, (rule, w) in enumerate(zip(rules, want)):
                    got = 0.0 if rule is None else evaluate(rule, {**env, "g": g}, ops)
                    got = torch.as_tensor(got, dtype=torch.float64)
                    w = torch.zeros((), dtype=torch.float64) if w is None else w
                    ok = bool(torch.isclose(got, w, rtol=1e-12, atol=0.0, equal_nan=True))
                    assert ok, (op, values, exponent, g_value, i, float(got), float(w))


def test_every_op_has_a_triton_printing_line():
    missing = sorted((ELEMENTWISE | INTERNAL) - set(PRINT) - {"pow"})  # pow: tile._pow
    assert not missing, missing


def test_every_spelled_op_has_a_row_in_the_language_docs():
    rows = set(re.findall(r"^\| `([a-z_0-9]+)\(", DOCS.read_text(), flags=re.M))
    assert set(SPELLED) - rows == set(), sorted(set(SPELLED) - rows)


def test_internal_ops_are_not_spelled():
    for op in OPS.values():
        assert (op.kind is Kind.INTERNAL) <= (op.spelling is None), op.name


def test_the_reductions_of_the_derivatives_sum_what_they_say():
    """sum_to and sum_steps on the interpreter's tensors (leading axes: steps and
    batch) and as Triton text (masked sums over the dims' axes, and over time)."""
    from recc.backends.names import Namespace
    from recc.backends.triton.tile import TileEmitter, TileLayout
    from recc.ir.ops import REDUCTION

    assert REDUCTION == {"sum_to", "sum_steps"}
    ops = TorchOps(torch.float64, torch.device("cpu"))
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)  # [B, T, D, E]
    ref = Ref(("D", "E"), "x", "input")
    env = {"x": x}
    to_e = Apply(("E",), "sum_to", (ref,))
    steps = Apply(("D", "E"), "sum_steps", (ref,))
    assert torch.equal(evaluate(to_e, env, ops), x.sum(dim=-2))
    assert torch.equal(evaluate(steps, env, ops), x.sum(dim=(0, 1)))
    emitter = TileEmitter(TileLayout(("D", "E")).with_names(Namespace()), {"x": "x"}, Namespace())
    emitter.emit(to_e)
    emitter.emit(steps)
    assert emitter.lines == [
        "_t1 = tl.sum(tl.where(m_D, x, 0.0), axis=1, keep_dims=True)",
        "_t2 = tl.sum(tl.where(m_T, x, 0.0), axis=0, keep_dims=True)",
    ]

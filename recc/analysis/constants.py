"""What a constant may be: finite, representable in float32, and inf only as a bound.

Stage: analysis (the first check `analyze` runs). Every constant
sub-expression of a spec (literals, and operators whose operands are all
constants, through lets bound to constants) is folded in float64 with IEEE
semantics, as the interpreter would compute it. What cannot be honoured the
same way on every backend is a located RecError:

  - NaN (`log(0 - 2)`, `(1 - 1) / 0`): the recurrence would be NaN at every step;
  - a constant that overflows (`exp(1000)`, `1 / 0`, `1e300 * 1e10`), or one
    larger than float32 holds (recc computes fp32 for fp16/bf16/fp32 inputs):
    it would be inf in the computation, and arithmetic on inf (inf - inf,
    0 * inf) is NaN;
  - `inf` / `-inf` anywhere but as an operand of max() or min(), where it is
    the lattice bound (max(x, -inf) = x) and every backend treats it exactly.

A state's initial value may be +-inf (see `recc.analysis.classify` for the
classes that give it a meaning).
"""

from __future__ import annotations

import math
from typing import Any

from recc.analysis.rewrite import SCALAR_OPS, fold_scalar
from recc.errors import RecError
from recc.ir.evaluate import evaluate
from recc.ir.nodes import Apply, Const, Expr, Recurrence
from recc.ir.printer import expr_to_source

FLOAT32_MAX = 3.4028234663852886e38
_BOUNDS = ("max", "min")
_NAMES = {"add": "'+'", "sub": "'-'", "mul": "'*'", "div": "'/'", "neg": "unary '-'"}


class _ConstantOps:
    """Evaluator semantics: a float for a constant value, None for anything else."""

    def __init__(self, rec: Recurrence) -> None:
        self.rec = rec

    def error(self, message: str, node: Expr, hint: str) -> RecError:
        return RecError(message, node.span, hint, self.rec.source, self.rec.filename)

    def const(self, node: Const) -> float:
        self.representable(node.value, node)
        return node.value

    def representable(self, value: float, node: Expr) -> None:
        if math.isfinite(value) and abs(value) > FLOAT32_MAX:
            raise self.error(
                f"this constant ({value:g}) is larger than float32 can hold",
                node,
                "recc computes in float32 for fp16, bf16 and fp32 inputs, where it would be "
                "inf: use a smaller constant",
            )

    def apply(self, node: Apply, args: list[Any]) -> float | None:
        for arg_node, value in zip(node.args, args):
            if value is not None and math.isinf(value) and node.op not in _BOUNDS:
                if node.op == "neg" and isinstance(arg_node, Const):
                    continue  # `-inf` is how the grammar spells minus infinity
                where = _NAMES.get(node.op, f"{node.op}()")
                raise self.error(
                    f"inf is an operand of {where} here; inf may only be a bound in max() or min()",
                    arg_node,
                    "arithmetic on inf gives inf or NaN at every step (inf - inf and 0 * inf "
                    "are NaN): use it as max(x, -inf) / min(x, inf), or a finite constant",
                )
        if any(a is None for a in args):
            return None
        if node.op in SCALAR_OPS:
            value = fold_scalar(node.op, *args)
        else:  # sum / transpose of a scalar constant
            value = args[0]
        text = expr_to_source(node)
        if math.isnan(value) and not any(math.isnan(a) for a in args):
            raise self.error(
                f"this constant expression is not a real number ({text} is NaN); "
                "it would be NaN at every step",
                node,
                "log and sqrt need a positive argument, and dividing by a constant 0 "
                "is undefined: check the constants in this expression",
            )
        if math.isinf(value) and not any(math.isinf(a) for a in args):
            raise self.error(
                f"this constant expression overflows ({text} is {value})",
                node,
                "it would be inf at every step, and arithmetic on inf is inf or NaN: "
                "use smaller constants (inf itself may be a bound in max() or min())",
            )
        self.representable(value, node)
        return value


def check_constants(rec: Recurrence) -> None:
    """Raise a located RecError for a constant no backend can compute as written."""
    ops = _ConstantOps(rec)
    env: dict[str, Any] = {d.name: None for d in (*rec.inputs, *rec.value_params(), *rec.states)}
    for let in rec.lets:
        env[let.name] = evaluate(let.expr, env, ops)
    for definition in (*rec.updates, *rec.outputs):
        evaluate(definition.expr, env, ops)

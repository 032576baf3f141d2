"""Scalarise a recurrence into per-element sympy expressions.

Stage: analysis. The dims are instantiated with small concrete sizes and the
shared IR evaluator runs one step with numpy arrays of sympy expressions as
values, so every element of every new state is one sympy expression in
scalar symbols named like `h[0]`, `S[1,2]`, `k[0]`. sympy then does the
algebra the classifier decides with: derivatives, dependence, linearity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sympy

from recc.errors import RecError
from recc.ir.evaluate import align, step
from recc.ir.nodes import Apply, Const, Recurrence
from recc.ir.ops import ELEMENTWISE, NUMPY_FUNCTIONS, OPS
from recc.ir.printer import expr_to_source


def _is_real_constant(value: sympy.Expr) -> bool:
    """True for real numbers and ±oo; False for complex, nan and zoo (1/0)."""
    if value in (sympy.oo, -sympy.oo):
        return True
    return value.is_extended_real is not False and value is not sympy.nan and value is not sympy.zoo


class SympyOps:
    """IR operators on numpy object arrays of sympy expressions (no batch axes).

    A constant sub-expression that is not a real number (log(0 - 1)) is a
    RecError at its place in `source`: the spec is NaN whatever the inputs."""

    def __init__(self, source: str = "", filename: str = "<spec>") -> None:
        self.source = source
        self.filename = filename
        # which values read a state (by id; `_keep` keeps the arrays alive)
        self._reads: dict[int, bool] = {}
        self._keep: list[np.ndarray] = []
        # state-free contractions stand for themselves: name -> array of symbols
        self.opaque: dict[str, np.ndarray] = {}
        self._opaque_by_node: dict[Apply, np.ndarray] = {}

    def mark_state(self, value: np.ndarray) -> None:
        self._reads[id(value)] = True
        self._keep.append(value)

    def _opaque(self, node: Apply, shape: tuple[int, ...]) -> np.ndarray:
        """Fresh real symbols for a state-free matmul / dot / sum.

        Only how the state enters decides the class, so a state-free value may
        be any value of its shape: a symbol per element keeps the scalarised
        update linear in size where `W @ W @ ... @ h` would grow as 3^k terms
        (and sympy's derivatives with it). Named after the spec's text."""
        found = self._opaque_by_node.get(node)
        if found is not None:
            return found
        text = expr_to_source(node)
        name = f"({text})" if len(text) <= 48 else f"_c{len(self.opaque)}"
        while name in self.opaque:
            name += "'"
        arr = _symbols(name, shape)
        self.opaque[name] = arr
        self._opaque_by_node[node] = arr
        return arr

    def const(self, node: Const) -> np.ndarray:
        value = node.value
        if value == float("inf"):
            expr: Any = sympy.oo
        elif value == float("-inf"):
            expr = -sympy.oo
        elif float(value).is_integer():
            expr = sympy.Integer(int(value))
        else:
            expr = sympy.Float(value)
        return np.array(expr, dtype=object)

    def apply(self, node: Apply, args: list[Any]) -> np.ndarray:
        reads = any(self._reads.get(id(a), False) for a in args)
        if not reads and node.op in ("matmul", "dot", "sum") and args[0].shape:
            shape: tuple[int, ...] = ()
            if node.op == "matmul":
                shape = np.matmul(np.empty(args[0].shape), np.empty(args[1].shape)).shape
            return self._opaque(node, shape)
        out = self._apply(node, args)
        if reads:
            self.mark_state(out)
        for value in out.flat:
            if isinstance(value, sympy.Expr) and value.is_number and not _is_real_constant(value):
                raise RecError(
                    f"this constant expression is not a real number ({value}); "
                    "it would be NaN at every step",
                    node.span,
                    "log and sqrt need a positive argument, and dividing by a constant 0 "
                    "is undefined: check the constants in this expression",
                    self.source,
                    self.filename,
                )
        return out

    def _apply(self, node: Apply, args: list[Any]) -> np.ndarray:
        op = node.op
        if op in ELEMENTWISE:
            fn = OPS[op].sympy
            aligned = [align(v, a.dims, node.dims) for v, a in zip(args, node.args)]
            aligned = np.broadcast_arrays(*aligned)
            out = np.empty(aligned[0].shape, dtype=object)
            for index in np.ndindex(out.shape):
                out[index] = fn(*(v[index] for v in aligned))
            return out
        if op == "matmul":
            a, b = args
            return np.array(np.matmul(a, b), dtype=object)
        if op == "outer":
            return np.array(np.multiply.outer(args[0], args[1]), dtype=object)
        if op == "dot":
            return np.array(sum(args[0] * args[1]), dtype=object)
        if op == "sum":
            return np.array(sum(args[0].flat), dtype=object)
        if op == "transpose":
            return args[0].T
        raise AssertionError(f"unknown op {op}")  # pragma: no cover


def _symbols(name: str, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.empty(shape, dtype=object)
    for index in np.ndindex(shape):
        label = ",".join(str(i) for i in index)
        arr[index] = sympy.Symbol(f"{name}[{label}]" if shape else name, real=True)
    return arr


@dataclass(frozen=True)
class Scalarised:
    """One step of a recurrence at concrete dim sizes, element by element."""

    sizes: dict[str, int]
    old: dict[str, np.ndarray]  # state name -> array of state symbols
    new: dict[str, np.ndarray]  # state name -> array of update expressions
    values: dict[str, np.ndarray]  # input/param name -> array of symbols

    def state_elements(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every (state, index) in a fixed order."""
        return [(name, idx) for name, arr in self.old.items() for idx in np.ndindex(arr.shape)]

    def state_symbols(self) -> set[sympy.Symbol]:
        return {s for arr in self.old.values() for s in arr.flat}

    def state_symbol_set(self) -> frozenset[sympy.Symbol]:
        """`state_symbols`, computed once."""
        cached = self.__dict__.get("_state_symbols")
        if cached is None:
            cached = frozenset(self.state_symbols())
            object.__setattr__(self, "_state_symbols", cached)
        return cached


def scalarise(rec: Recurrence, sizes: dict[str, int]) -> Scalarised:
    env: dict[str, Any] = {}
    values = {}
    for decl in (*rec.inputs, *rec.value_params()):
        values[decl.name] = _symbols(decl.name, tuple(sizes[d] for d in decl.dims))
    old = {s.name: _symbols(s.name, tuple(sizes[d] for d in s.dims)) for s in rec.states}
    env.update(values)
    env.update(old)
    ops = SympyOps(rec.source, rec.filename)
    for arr in old.values():
        ops.mark_state(arr)
    new, _ = step(rec, ops, env, outputs=False)
    new = {name: np.broadcast_to(arr, old[name].shape) for name, arr in new.items()}
    values.update(ops.opaque)  # state-free contractions: symbols like the inputs
    return Scalarised(sizes, old, new, values)


def uniform_sizes(rec: Recurrence, size: int) -> dict[str, int]:
    return {d: size for d in rec.dims}


def sparsity(sc: Scalarised) -> set[tuple[int, int]]:
    """(i, j) where new[i] reads old[j], over flattened state elements (no derivatives:
    those grow with the nesting of the update)."""
    elements = sc.state_elements()
    symbol_index = {sc.old[name][idx]: j for j, (name, idx) in enumerate(elements)}
    found = set()
    for i, (name, idx) in enumerate(elements):
        for sym in sc.new[name][idx].free_symbols & symbol_index.keys():
            found.add((i, symbol_index[sym]))
    return found


def random_values(sc: Scalarised, rng: np.random.Generator) -> dict[sympy.Symbol, float]:
    """Random numbers for every input/param symbol (states excluded)."""
    out = {}
    for arr in sc.values.values():
        for sym in arr.flat:
            # Positive and below 1, so log, sqrt(1 - x*x) and friends stay real.
            out[sym] = float(rng.uniform(0.1, 0.9))
    return out


def numeric_function(exprs: list[sympy.Expr], symbols: list[sympy.Symbol]):
    """A numpy function of `symbols` returning every expression's value (one call, no
    sympy evaluation per entry); sigmoid and softplus map to numpy formulas."""
    modules = [NUMPY_FUNCTIONS, "numpy"]
    return sympy.lambdify(symbols, exprs, modules=modules)

"""Hypothesis strategies: random valid `.rec` specs of each class, and inputs.

Every spec strategy yields `(source, expected)`: the spec's text and what the
classifier should find (`Expected`). Specs are generated as text, from
templates that fill random *gate expressions* (state-free sub-expressions
built from inputs, params, lets, constants and the operator set) into one of
several equivalent ways of writing each class: collected (`a * h + b`) and
un-collected (`h - z * h + z * v`, `(1 - z) * (h + c)`, let chains that read
the state, ...). Statement order is shuffled where the language allows it
(declarations anywhere, lets in order, updates and outputs anywhere), and
comments are sprinkled in.

Rules the generators keep so that the intended class is the true class:
  * coefficients whose non-vanishing matters (a block's coupling, a
    low-rank term) are built from *positive* gates (sigmoid, exp, softplus,
    sums and products of these), which are never identically zero;
    differences appear only where a zero would not change the class;
  * min/max operands are non-constant and of either sign, over raw inputs
    (with a <= 0 <= b, max(min(h, a), b) would just be b; with a == 0,
    max(h + a, b) would also be max-min);
  * operands that must not be symbolically related (the `a` and `b` of
    max(min(h, a), b), two rank-1 keys) come from disjoint sets of inputs;
  * log and sqrt only ever see positive values (sqrt(sigmoid(x)),
    log(1 + exp(x))); divisions only divide by positive gates.

Also here: `call_tensors(rec)` / `step_env(rec)` for random fp64 values.

Stage: test support. Imports hypothesis, which is a test extra
(`pip install -e ".[test]"`), not a dependency of recc: only the tests and
benchmarks/fuzz.py (through recc.testing.fuzz) import this module; nothing in
recc's runtime, nor `recc check`, may. `zoo_mutant` reads the bundled specs of
a source checkout (specs/ at the repository root).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from hypothesis import strategies as st

from recc.ir.nodes import Recurrence
from recc.ir.ops import SPELLED

CLASSES = ("diagonal", "dplr", "minmax", "nonlinear")


@dataclass(frozen=True)
class Expected:
    """What the classifier should say about a generated spec."""

    kind: str  # "diagonal", "dplr", "minmax", "nonlinear"
    jacobian: str  # "diagonal", "block", "dense"
    block_size: int = 1  # checked when jacobian == "block"
    rank: int = 0  # checked when kind == "dplr"
    semiring: str = ""  # checked when kind == "minmax"
    variant: str = ""  # which template produced the spec, for failure messages


# ---------------------------------------------------------------------------
# a spec under construction
# ---------------------------------------------------------------------------

_NAME_PREFIXES = ("x", "k", "u", "inf_", "dims_", "input_", "T", "exp_", "state")
# Whole names a spec may use that are Python keywords or builtins, or spell the
# generated code's own identifiers (tl, i_b, o_T, h_carry, _t2, a0_00, ...): every
# backend must keep them apart from its own names.
NASTY_NAMES = (
    "lambda",
    "None",
    "True",
    "def",
    "range",
    "float",
    "torch",
    "tl",
    "triton",
    "T",
    "H",
    "DTYPE",
    "BLOCK_T",
    "i_b",
    "i_c",
    "t0",
    "o_T",
    "m_T",
    "is_first",
    "size_D",
    "_t1",
    "_t2",
    "_ct1",
    "a0_00",
    "b0_0",
    "A0_00",
    "rho0",
    "x_ptr",
    "s_x_b",
    "_combine_0",
    "_shift_combine",
    "_tanh",
    "_expm1",
    "_log1p",
    "_log_sigmoid",
    "_g1",
)


class _Spec:
    """Lines of a spec, kept apart by kind so they can be shuffled legally."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dims: list[str] = []
        self.decls: list[str] = []  # input / param / state lines
        self.lets: list[str] = []
        self.tail: list[str] = []  # update / output lines
        self.counter = 0
        self.prefix = "x"
        self.specials: list[str] = []  # nasty names, handed out first

    def fresh(self, role: str) -> str:
        self.counter += 1
        if self.specials:
            return self.specials.pop()
        return f"{self.prefix}{role}{self.counter}"

    def input(self, dims: str = "") -> str:
        name = self.fresh("i")
        self.decls.append(f"input {name}{dims}")
        return name

    def param(self, dims: str = "") -> str:
        name = self.fresh("p")
        self.decls.append(f"param {name}{dims}")
        return name

    def let(self, text: str) -> str:
        name = self.fresh("g")
        self.lets.append(f"let {name} = {text}")
        return name

    def render(self, draw) -> str:
        if not any(d.startswith("input ") for d in self.decls):
            self.input()  # a call needs an input: it gives B and T
        head = [f"dims {', '.join(self.dims)}"] if self.dims else []
        others = head + self.decls + self.tail
        lines = others + self.lets
        if draw(st.booleans()):
            order = draw(st.permutations(range(len(lines))))
            lets = iter(self.lets)
            n = len(others)
            lines = [others[i] if i < n else next(lets) for i in order]
        out = []
        for line in lines:
            comment = draw(st.sampled_from(["", "", "", "  # note: a * h + b", "#x"]))
            out.append("  " + line + comment)
        intro = draw(st.sampled_from(["", "# generated by recc/testing/strategies.py\n"]))
        return intro + f"recurrence {self.name} {{\n" + "\n".join(out) + "\n}\n"


# ---------------------------------------------------------------------------
# gate expressions: state-free, as text
# ---------------------------------------------------------------------------

_POS_CONSTS = ("0.5", "0.9", "2", "1e-3", "3.5", "0.25", "exp(-1)", "sqrt(2)")


def _paren(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z_][A-Za-z_0-9]*|\d[\d.e-]*", text) else f"({text})"


@st.composite
def _pre(draw, leaves: list[str]) -> str:
    """A pre-activation: a small signed combination of leaves (values in about [-8, 8])."""
    a = draw(st.sampled_from(leaves))
    others = [x for x in leaves if x != a]
    kind = draw(st.integers(0, 6 if others else 3))
    if kind == 0:
        return a
    if kind == 1:
        return f"-{_paren(a)}"
    if kind == 2:
        return f"{draw(st.sampled_from(_POS_CONSTS))} * {_paren(a)}"
    if kind == 3:
        return f"{_paren(a)} + {draw(st.sampled_from(_POS_CONSTS))}"
    b = draw(st.sampled_from(others))
    if kind == 4:
        return f"{_paren(a)} * {_paren(b)}"
    if kind == 5:
        return f"{_paren(a)} + {_paren(b)}"
    return f"{_paren(a)} - {_paren(b)}"


@st.composite
def positive_gate(draw, leaves: list[str], depth: int = 2) -> str:
    """A gate that is positive for every input (never identically zero)."""
    kind = draw(st.integers(0, 10 if depth > 0 else 6))
    if kind == 0:
        return f"sigmoid({draw(_pre(leaves))})"
    if kind == 1:
        return f"exp(-softplus({draw(_pre(leaves))}))"
    if kind == 2:
        return f"softplus({draw(_pre(leaves))})"
    if kind == 3:
        return f"sqrt(sigmoid({draw(_pre(leaves))}))"
    if kind == 4:
        return f"1 / (1 + exp({draw(_pre(leaves))}))"
    if kind == 5:
        return draw(st.sampled_from(_POS_CONSTS))
    if kind == 6:
        return f"exp(-{draw(st.sampled_from(_POS_CONSTS))} * sigmoid({draw(_pre(leaves))}))"
    a = draw(positive_gate(leaves, depth - 1))
    b = draw(positive_gate(leaves, depth - 1))
    if kind == 7:
        return f"{_paren(a)} * {_paren(b)}"
    if kind == 8:
        return f"{_paren(a)} + {_paren(b)}"
    if kind == 9:
        return f"{_paren(a)} / (1 + {_paren(b)})"
    return f"exp(log({_paren(a)}) * 0.5)"


@st.composite
def gate(draw, leaves: list[str], depth: int = 2) -> str:
    """A state-free gate of any sign."""
    kind = draw(st.integers(0, 7 if depth > 0 else 3))
    if kind == 0:
        return draw(positive_gate(leaves, depth))
    if kind == 1:
        return f"tanh({draw(_pre(leaves))})"
    if kind == 2:
        return draw(_pre(leaves))
    if kind == 3:
        return f"log(sigmoid({draw(_pre(leaves))}))"
    a = draw(gate(leaves, depth - 1))
    b = draw(gate(leaves, depth - 1))
    if kind == 4:
        return f"{_paren(a)} * {_paren(b)}"
    if kind == 5 and a != b:
        return f"{_paren(a)} - {_paren(b)}"
    if kind == 6:
        return f"-{_paren(a)}"
    return f"max({a}, {b})" if draw(st.booleans()) else f"min({a}, {b})"


@st.composite
def _leaves(draw, spec: _Spec, dim: str, n_vec=(1, 3), scalars=True, matvec=False) -> list[str]:
    """Declare a few inputs/params over `dim` (and maybe scalars, a matvec) as leaves."""
    leaves = []
    for _ in range(draw(st.integers(*n_vec))):
        leaves.append(spec.input(f"[{dim}]") if draw(st.booleans()) else spec.param(f"[{dim}]"))
    if scalars and draw(st.booleans()):
        leaves.append(spec.input() if draw(st.booleans()) else spec.param())
    if scalars and draw(st.integers(0, 3)) == 0:  # the dim read as a value: its size
        leaves.append(draw(st.sampled_from([f"(1 / sqrt({dim}))", f"(0.5 * {dim})"])))
    if matvec and draw(st.booleans()):
        if "E" not in spec.dims:
            spec.dims.append("E")
        w = spec.param(f"[{dim}, E]")
        u = spec.input("[E]")
        leaves.append(f"{w} @ {u}")
    return leaves


@st.composite
def _with_lets(draw, spec: _Spec, leaves: list[str]) -> list[str]:
    """Maybe bind a chain of lets over the leaves; the lets become leaves too."""
    leaves = list(leaves)
    for _ in range(draw(st.integers(0, 2))):
        make = positive_gate if draw(st.booleans()) else gate
        leaves.append(spec.let(draw(make(leaves, 1))))
    return leaves


@st.composite
def _new_spec(draw, kind: str) -> _Spec:
    spec = _Spec(draw(st.sampled_from([kind, f"{kind}_rnn", "r", "update_rule", "inf_net"])))
    spec.prefix = draw(st.sampled_from(_NAME_PREFIXES))
    spec.specials = draw(st.lists(st.sampled_from(NASTY_NAMES), unique=True, max_size=5))
    return spec


def _state_init(draw) -> str:
    return draw(st.sampled_from(["0", "0", "1", "-0.5", "0.25"]))


# ---------------------------------------------------------------------------
# diagonal
# ---------------------------------------------------------------------------


@st.composite
def _diag_vector_update(draw, spec: _Spec, h: str, leaves: list[str]) -> tuple[str, str]:
    """(update text, template name) of an update affine in h with state-free coefficients."""
    a = draw(gate(leaves))
    b = draw(gate(leaves))
    z = draw(positive_gate(leaves))
    c = draw(gate(leaves))
    g = draw(positive_gate(leaves))
    v = draw(st.sampled_from(leaves))
    templates = {
        "a*h+b": f"{_paren(a)} * {h} + {_paren(b)}",
        "b+h*a": f"{_paren(b)} + {h} * {_paren(a)}",
        "h-z*h+z*v": f"{h} - {_paren(z)} * {h} + {_paren(z)} * {_paren(v)}",
        "(1-z)*(h+c)": f"(1 - {_paren(z)}) * ({h} + {_paren(c)})",
        "a*(h-c)+b": f"{_paren(a)} * ({h} - {_paren(c)}) + {_paren(b)}",
        "(a*h+b)/g": f"({_paren(a)} * {h} + {_paren(b)}) / {_paren(g)}",
        "b-a*-h": f"{_paren(b)} - {_paren(a)} * -{h}",
        "a*h": f"{_paren(a)} * {h}",
        "a*b*h+c": f"{_paren(a)} * {_paren(b)} * {h} + {_paren(c)}",
        "a*h+z*h+c": f"{_paren(a)} * {h} + {_paren(z)} * {h} + {_paren(c)}",
        "let m=a*h": "",
        # times a vector leaf (leaves[0] is over the state's dim): b alone may be a scalar
        "b (reads no state)": f"{_paren(b)} * {leaves[0]}",
    }
    name = draw(st.sampled_from(sorted(templates)))
    if name == "let m=a*h":
        m = spec.let(f"{_paren(a)} * {h}")
        return f"{m} + {_paren(b)}", name
    return templates[name], name


@st.composite
def _diag_matrix(draw, spec: _Spec) -> str:
    """A matrix state S[K, V] with an elementwise decay; returns the template name."""
    spec.dims += ["K", "V"]
    k = spec.input("[K]")
    v = spec.input("[V]")
    q = spec.input("[K]")
    s_placeholder = "\0S\0"
    along = draw(st.sampled_from(["K", "V", "", "K and V"]))
    if along == "K and V":  # a decay over K times one over V: an outer-product decay
        a = _paren(draw(gate(draw(_leaves(spec, "K", scalars=False)))))
        b = _paren(draw(gate(draw(_leaves(spec, "V", scalars=False)))))
        a = f"{a} * {s_placeholder} * {b}"
    else:
        if along:
            leaves = draw(_leaves(spec, along))
        else:
            leaves = [spec.input() if draw(st.booleans()) else spec.param() for _ in range(2)]
        leaves = draw(_with_lets(spec, leaves))
        a = _paren(draw(gate(leaves)))
    c = _paren(draw(positive_gate([spec.input()])))
    s = spec.fresh("S")
    spec.decls.append(f"state {s}[K, V] = {_state_init(draw)}")
    if along == "K and V":
        scaled = a.replace(s_placeholder, s)
        templates = {
            "a*S*b+kv": f"{scaled} + outer({k}, {v})",
            "kv+a*S*b": f"outer({c} * {k}, {v}) + {scaled}",
        }
    else:
        templates = {
            "a*S+kv": f"{a} * {s} + outer({k}, {v})",
            "S*a+kv": f"{s} * {a} + outer({k}, {v})",
            "a*(S+kv)": f"{a} * ({s} + outer({k}, {v}))",
            "a*S+c*kv": f"{a} * {s} + {c} * outer({k}, {v})",
            "kv+S*a": f"outer({c} * {k}, {v}) + {s} * {a}",
            # exact rewrites: transposes pushed to the state cancel
            "(S.T*a).T+kv": f"({s}.T * {a}).T + outer({k}, {v})",
            "(a*S.T).T+kv": f"(transpose({a} * {s}.T) + outer({k}, {v})).T.T",
        }
    name = draw(st.sampled_from(sorted(templates)))
    spec.tail.append(f"update {s} = {templates[name]}")
    out = spec.fresh("o")
    readout = draw(st.sampled_from([f"{q} @ {s}", f"{s}.T @ {q}", f"transpose({s}) @ {q}"]))
    spec.tail.append(f"output {out} = {readout}")
    return "S:" + name


@st.composite
def diagonal_spec(draw) -> tuple[str, Expected]:
    """h' = a * h + b (vector, maybe several states, maybe a matrix state), or LRU 2x2."""
    spec = draw(_new_spec("diagonal"))
    pick = draw(st.integers(0, 5))
    if pick == 0:
        return draw(_lru_spec(spec))
    if pick == 1:
        return draw(_partial_block_spec(spec))
    spec.dims.append("D")
    leaves = draw(_leaves(spec, "D", matvec=True))
    leaves = draw(_with_lets(spec, leaves))
    variants = []
    for _ in range(draw(st.integers(1, 2))):
        h = spec.fresh("h")
        spec.decls.append(f"state {h}[D] = {_state_init(draw)}")
        text, name = draw(_diag_vector_update(spec, h, leaves))
        spec.tail.append(f"update {h} = {text}")
        variants.append(name)
        if draw(st.booleans()):
            spec.tail.append(f"output {h}")
        else:
            spec.tail.append(f"output {spec.fresh('y')} = {h} * {_paren(leaves[0])}")
    if draw(st.booleans()):
        variants.append(draw(_diag_matrix(spec)))
    if draw(st.integers(0, 3)) == 0:
        # a state only its final shows (nothing reads it), whose update's derivative is
        # infinite at every step (sqrt at 0): only its last step may be differentiated
        last = spec.fresh("last")
        spec.decls.append(f"state {last}[D] = {_state_init(draw)}")
        singular = f"sqrt(0 * {_paren(leaves[0])})"
        spec.tail.append(f"update {last} = {_paren(draw(gate(leaves)))} * {singular}")
        variants.append("final only")
    return spec.render(draw), Expected("diagonal", "diagonal", variant=", ".join(variants))


@st.composite
def matrix_state_spec(draw) -> tuple[str, Expected]:
    """One decayed matrix state written by outer products and read out linearly (the
    shapes of GLA, RetNet, Mamba2): the diagonal class's chunkwise form."""
    spec = draw(_new_spec("diagonal"))
    variant = draw(_diag_matrix(spec))
    return spec.render(draw), Expected("diagonal", "diagonal", variant=variant)


@st.composite
def _partial_block_spec(draw, spec: _Spec) -> tuple[str, Expected]:
    """States coupled channel by channel with some couplings absent: a triangle, a swap
    (no diagonal at all), or three states in a cycle. The generated scans keep only the
    slots the coupling can reach."""
    spec.dims.append("D")
    leaves = draw(_with_lets(spec, draw(_leaves(spec, "D"))))

    def pos() -> str:
        return _paren(draw(positive_gate(leaves)))

    def any_gate() -> str:
        return _paren(draw(gate(leaves)))

    variant = draw(st.sampled_from(["triangle", "swap", "cycle3"]))
    k = 3 if variant == "cycle3" else 2
    hs = [spec.fresh("h") for _ in range(k)]
    for h in hs:
        spec.decls.append(f"state {h}[D] = {_state_init(draw)}")
    if variant == "triangle":
        updates = [f"{pos()} * {hs[0]} + {pos()} * {hs[1]} + {any_gate()}", f"{pos()} * {hs[1]}"]
    elif variant == "swap":
        updates = [f"{pos()} * {hs[1]} + {any_gate()}", f"{pos()} * {hs[0]} + {any_gate()}"]
    else:
        updates = [
            f"{pos()} * {hs[0]} + {pos()} * {hs[1]} + {any_gate()}",
            f"{pos()} * {hs[2]} + {hs[1]}",
            f"{pos()} * {hs[0]}",
        ]
    for h, text in zip(hs, updates):
        spec.tail.append(f"update {h} = {text}")
    spec.tail.append(f"output {spec.fresh('o')} = " + " + ".join(hs))
    expected = Expected("diagonal", "block", block_size=k, variant=f"partial block: {variant}")
    return spec.render(draw), expected


@st.composite
def _lru_spec(draw, spec: _Spec) -> tuple[str, Expected]:
    """h1' = a*h1 - b*h2 + x, h2' = b*h1 + a*h2 + y: diagonal with 2x2 blocks."""
    spec.dims.append("D")
    leaves = draw(_with_lets(spec, draw(_leaves(spec, "D"))))
    a = _paren(draw(positive_gate(leaves)))
    b = _paren(draw(positive_gate(leaves)))
    x = _paren(draw(gate(leaves)))
    y = _paren(draw(gate(leaves)))
    h1, h2 = spec.fresh("re"), spec.fresh("im")
    spec.decls += [f"state {h1}[D] = {_state_init(draw)}", f"state {h2}[D] = 0"]
    variant = draw(st.sampled_from(["plain", "swapped", "let"]))
    if variant == "plain":
        u1 = f"{a} * {h1} - {b} * {h2} + {x}"
        u2 = f"{b} * {h1} + {a} * {h2} + {y}"
    elif variant == "swapped":
        u1 = f"{x} - {h2} * {b} + {h1} * {a}"
        u2 = f"{y} + {a} * {h2} + {h1} * {b}"
    else:
        r1 = spec.let(f"{a} * {h1} - {b} * {h2}")
        r2 = spec.let(f"{b} * {h1} + {a} * {h2}")
        u1, u2 = f"{r1} + {x}", f"{r2} + {y}"
    spec.tail += [f"update {h1} = {u1}", f"update {h2} = {u2}"]
    spec.tail.append(f"output {h1}")
    if draw(st.booleans()):
        spec.tail.append(f"output {spec.fresh('mag')} = {h1} * {h1} + {h2} * {h2}")
    return spec.render(draw), Expected("diagonal", "block", block_size=2, variant="lru:" + variant)


# ---------------------------------------------------------------------------
# DPLR
# ---------------------------------------------------------------------------


@st.composite
def dplr_spec(draw) -> tuple[str, Expected]:
    """S[V, K]' = S * d + sum_r outer(S @ u_r, w_r) + outer(v, k): rank 1 or 2."""
    spec = draw(_new_spec("dplr"))
    spec.dims += ["K", "V"]
    rank = draw(st.integers(1, 2))
    keys = [spec.input("[K]") for _ in range(rank)]
    vals = [spec.input("[V]") for _ in range(rank)]
    q = spec.input("[K]")
    betas = [spec.input() for _ in range(rank)]
    decay_leaves = draw(_leaves(spec, "K")) if draw(st.booleans()) else [spec.input()]
    decay_leaves = draw(_with_lets(spec, decay_leaves))
    d = _paren(draw(positive_gate(decay_leaves)))
    s = spec.fresh("S")
    spec.decls.append(f"state {s}[V, K] = {_state_init(draw)}")

    def w(r: int) -> str:  # the right vector of rank-1 term r: a positive multiple of a key
        kind = draw(st.integers(0, 3))
        beta = _paren(draw(positive_gate([betas[r]], 1)))
        if kind == 0:
            return f"{beta} * {keys[r]}"
        if kind == 1:
            return f"{keys[r]} * {beta}"
        if kind == 2:
            return keys[r]
        return f"{beta} * sigmoid({keys[r]})"

    def u(r: int) -> str:  # the left vector: the key itself, or a sigmoid of it (RWKV-7 style)
        return keys[r] if draw(st.integers(0, 2)) else f"sigmoid({keys[r]})"

    def inject(r: int) -> str:
        return draw(
            st.sampled_from(
                [
                    f"outer({vals[r]}, {keys[r]})",
                    f"outer({_paren(betas[r])} * {vals[r]}, {keys[r]})",
                    f"{betas[r]} * outer({vals[r]}, {keys[r]})",
                ]
            )
        )

    variant = draw(st.sampled_from(["sum", "sum", "gated", "no-decay", "product", "plus-neg"]))
    if variant == "product" and rank == 1:
        variant = "sum"
    if variant in ("sum", "no-decay", "plus-neg"):
        base = (
            f"{s}" if variant == "no-decay" else draw(st.sampled_from([f"{s} * {d}", f"{d} * {s}"]))
        )
        text = base
        for r in range(rank):
            if variant == "plus-neg":
                text += f" + outer({s} @ {u(r)}, -{_paren(w(r))})"
            else:
                text += f" - outer({s} @ {u(r)}, {w(r)})"
        for r in range(rank):
            text += f" + {inject(r)}"
    elif variant == "gated":  # d * (S - sum outer(S @ u, w)) + injections
        inner = s + "".join(f" - outer({s} @ {u(r)}, {w(r)})" for r in range(rank))
        text = f"{d} * ({inner})" + "".join(f" + {inject(r)}" for r in range(rank))
    else:  # DeltaProduct: a chain of Householder-like steps through a let
        s1 = spec.let(f"{d} * ({s} - outer({s} @ {keys[0]}, {w(0)})) + {inject(0)}")
        text = f"{s1} - outer({s1} @ {keys[1]}, {w(1)}) + {inject(1)}"
    spec.tail.append(f"update {s} = {text}")
    spec.tail.append(f"output {spec.fresh('o')} = {s} @ {q}")
    expected = Expected("dplr", "dense", rank=rank, variant=f"{variant}, rank {rank}")
    return spec.render(draw), expected


# ---------------------------------------------------------------------------
# MinMax
# ---------------------------------------------------------------------------


@st.composite
def _minmax_operand(draw, leaves: list[str]) -> str:
    """A non-constant operand of either sign over real leaves.

    Sign-definite operands would let the algebra decide the min/max (with
    a <= 0 <= b, max(min(h, a), b) is just b), and a zero `a` would make
    max(h + a, b) read as max-min too; these forms avoid both.
    """
    pre = draw(_pre(leaves))
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return pre
    if kind == 1:
        return f"tanh({pre})"
    if kind == 2:
        return f"2 * tanh({pre})"
    if kind == 3:
        return f"sigmoid({pre}) - 0.5"
    return f"0.5 * {_paren(pre)} + tanh({draw(_pre(leaves))})"


@st.composite
def minmax_spec(draw) -> tuple[str, Expected]:
    """max(min(h, a), b) in exact rewrites, max-plus max(h + a, b) or min-plus
    min(h + a, b)."""
    spec = draw(_new_spec("minmax"))
    spec.dims.append("D")
    # a and b from disjoint inputs, so they are never symbolically related
    la = draw(_leaves(spec, "D", n_vec=(1, 2)))
    lb = draw(_leaves(spec, "D", n_vec=(1, 2)))
    a = draw(_minmax_operand(la))
    b = draw(_minmax_operand(lb))
    if draw(st.booleans()):
        a = spec.let(a)
    a, b = _paren(a), _paren(b)
    h = spec.fresh("h")
    semiring = draw(st.sampled_from(["max-min", "max-plus", "min-plus"]))
    spec.decls.append(f"state {h}[D] = {draw(st.sampled_from(['0', '-inf', '1', 'inf']))}")
    if semiring == "max-min":
        templates = {
            "max(min(h,a),b)": f"max(min({h}, {a}), {b})",
            "max(b,min(a,h))": f"max({b}, min({a}, {h}))",
            "min(max(h,b),max(a,b))": f"min(max({h}, {b}), max({a}, {b}))",
            "min(max(b,h),max(b,a))": f"min(max({b}, {h}), max({b}, {a}))",
            # exact rewrites: -max(x, y) = min(-x, -y), operands in order
            "-max(-h,b)": f"-max(-{h}, {b})",
            "-min(max(-h,-a),-b)": f"-min(max(-{h}, -{a}), -{b})",
            "let": "",
        }
    elif semiring == "min-plus":
        templates = {
            "min(h+a,b)": f"min({h} + {a}, {b})",
            "min(b,a+h)": f"min({b}, {a} + {h})",
            "min(h-a,b)": f"min({h} - {a}, {b})",
            "min(h,b)+a": f"min({h}, {b}) + {a}",
            "min(h,h+a)": f"min({h}, {h} + {a})",
            "min(h+a,h+b)": f"min({h} + {a}, {h} + {b})",
            "let": "",
        }
    else:
        templates = {
            "max(h+a,b)": f"max({h} + {a}, {b})",
            "max(b,a+h)": f"max({b}, {a} + {h})",
            "max(h-a,b)": f"max({h} - {a}, {b})",
            "max(h,b)+a": f"max({h}, {b}) + {a}",
            "a+max(b,h)": f"{a} + max({b}, {h})",
            "max(h+a,h+b)": f"max({h} + {a}, {h} + {b})",
            "let": "",
        }
    name = draw(st.sampled_from(sorted(templates)))
    if name == "let":
        if semiring == "max-min":
            text = f"max({spec.let(f'min({h}, {a})')}, {b})"
        elif semiring == "min-plus":
            text = f"min({spec.let(f'{h} + {a}')}, {b})"
        else:
            text = f"max({spec.let(f'{h} + {a}')}, {b})"
    else:
        text = templates[name]
    spec.tail.append(f"update {h} = {text}")
    spec.tail.append(draw(st.sampled_from([f"output {h}", f"output {spec.fresh('y')} = 2 * {h}"])))
    expected = Expected("minmax", "diagonal", semiring=semiring, variant=f"{semiring}: {name}")
    return spec.render(draw), expected


# ---------------------------------------------------------------------------
# nonlinear
# ---------------------------------------------------------------------------


@st.composite
def nonlinear_spec(draw) -> tuple[str, Expected]:
    """Elman (dense), tanh(u * h + x) (diagonal), GRU-like, a coupled 2-state cell (block 2)."""
    spec = draw(_new_spec("nonlinear"))
    spec.dims += ["D", "E"]
    x = [spec.input("[E]") for _ in range(3)]
    act = draw(st.sampled_from(["tanh", "sigmoid"]))
    variant = draw(st.sampled_from(["elman", "diag", "gru-diag", "gru-dense", "coupled", "lstm"]))
    h = spec.fresh("h")
    spec.decls.append(f"state {h}[D] = {_state_init(draw)}")

    def proj(i: int) -> str:  # U @ x_i (+ b)
        text = f"{spec.param('[D, E]')} @ {x[i]}"
        return text + (f" + {spec.param('[D]')}" if draw(st.booleans()) else "")

    def rec_term(v: str, dense: bool) -> str:  # W @ v or u * v, never identically zero
        return f"{spec.param('[D, D]')} @ {v}" if dense else f"{spec.param('[D]')} * {v}"

    if variant == "elman":
        spec.tail.append(f"update {h} = {act}({rec_term(h, True)} + {proj(0)})")
        expected = Expected("nonlinear", "dense")
    elif variant == "diag":
        spec.tail.append(f"update {h} = {act}({rec_term(h, False)} + {proj(0)})")
        expected = Expected("nonlinear", "diagonal")
    elif variant in ("gru-diag", "gru-dense"):
        dense = variant == "gru-dense"
        z = spec.let(f"sigmoid({proj(0)} + {rec_term(h, dense)})")
        r = spec.let(f"sigmoid({proj(1)} + {rec_term(h, dense)})")
        n = spec.let(f"tanh({proj(2)} + {r} * ({rec_term(h, dense)}))")
        form = draw(st.sampled_from(["(1-z)*n+z*h", "n+z*(h-n)", "h+(1-z)*(n-h)"]))
        text = {
            "(1-z)*n+z*h": f"(1 - {z}) * {n} + {z} * {h}",
            "n+z*(h-n)": f"{n} + {z} * ({h} - {n})",
            "h+(1-z)*(n-h)": f"{h} + (1 - {z}) * ({n} - {h})",
        }[form]
        spec.tail.append(f"update {h} = {text}")
        expected = Expected("nonlinear", "dense" if dense else "diagonal")
    elif variant == "coupled":
        h2 = spec.fresh("h")
        spec.decls.append(f"state {h2}[D] = 0")
        spec.tail.append(
            f"update {h} = {act}({rec_term(h, False)} + {rec_term(h2, False)} + {proj(0)})"
        )
        spec.tail.append(f"update {h2} = tanh({rec_term(h, False)} + {rec_term(h2, False)})")
        expected = Expected("nonlinear", "block", block_size=2)
    else:  # ParaLSTM-like: c and h coupled channel by channel
        c = spec.fresh("c")
        spec.decls.append(f"state {c}[D] = 0")
        f = spec.let(f"sigmoid({proj(0)} + {rec_term(h, False)})")
        cn = spec.let(f"{f} * {c} + (1 - {f}) * tanh({proj(1)} + {rec_term(h, False)})")
        spec.tail.append(f"update {c} = {cn}")
        spec.tail.append(f"update {h} = sigmoid({proj(2)}) * tanh({cn})")
        expected = Expected("nonlinear", "block", block_size=2)
    spec.tail.append(f"output {h}")
    expected = Expected(
        expected.kind, expected.jacobian, expected.block_size, variant=f"{variant} ({act})"
    )
    return spec.render(draw), expected


SPEC_STRATEGIES = {
    "diagonal": diagonal_spec,
    "dplr": dplr_spec,
    "minmax": minmax_spec,
    "nonlinear": nonlinear_spec,
}


def spec_of(kind: str | None = None):
    """(source, Expected) for one class, or for any class when `kind` is None."""
    if kind is None:
        return st.one_of(*(s() for s in SPEC_STRATEGIES.values()))
    return SPEC_STRATEGIES[kind]()


# ---------------------------------------------------------------------------
# random values
# ---------------------------------------------------------------------------


def _uniform(gen: torch.Generator, shape: tuple[int, ...], scale: float) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * scale


@st.composite
def sizes_for(draw, rec: Recurrence, max_size: int = 4) -> dict[str, int]:
    return {d: draw(st.integers(1, max_size)) for d in rec.dims}


@st.composite
def call_tensors(
    draw, rec: Recurrence, max_B: int = 2, max_T: int = 4, heads: bool = False, scale: float = 1.5
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(tensors by name, initial_state or None) for a whole call, fp64 in [-scale, scale].

    Inputs are [B, T, (H), *dims], params [(H), *dims]; initial states (when
    drawn) [B, (H), *dims]. Specs from this module only take log/sqrt of
    positive expressions, so any values are safe.
    """
    sizes = draw(sizes_for(rec))
    B, T = draw(st.integers(1, max_B)), draw(st.integers(1, max_T))
    H = draw(st.integers(1, 2)) if heads else None
    lead = (B, T) + ((H,) if H else ())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    tensors = {}
    for i in rec.inputs:
        tensors[i.name] = _uniform(gen, lead + tuple(sizes[d] for d in i.dims), scale)
    for p in rec.params:
        head = (H,) if H and draw(st.booleans()) else ()
        tensors[p.name] = _uniform(gen, head + tuple(sizes[d] for d in p.dims), scale)
    initial = None
    if draw(st.booleans()):
        initial = {
            s.name: _uniform(gen, (B,) + lead[2:] + tuple(sizes[d] for d in s.dims), scale)
            for s in rec.states
        }
    return tensors, initial


@st.composite
def step_env(draw, rec: Recurrence, max_B: int = 3, scale: float = 1.5) -> dict[str, torch.Tensor]:
    """One step's environment: inputs and old states [B, *dims], params [*dims], fp64."""
    sizes = draw(sizes_for(rec))
    B = draw(st.integers(1, max_B))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    env = {}
    for i in rec.inputs:
        env[i.name] = _uniform(gen, (B, *(sizes[d] for d in i.dims)), scale)
    for p in rec.params:
        env[p.name] = _uniform(gen, tuple(sizes[d] for d in p.dims), scale)
    for d in rec.dim_values:  # as `recc.signature.bind` binds them: the size
        env[d] = torch.tensor(float(sizes[d]), dtype=torch.float64)
    for s in rec.states:
        env[s.name] = _uniform(gen, (B, *(sizes[d] for d in s.dims)), scale)
    return env


# ---------------------------------------------------------------------------
# text for the fuzzer
# ---------------------------------------------------------------------------

_TOKENS = (
    "recurrence dims input param state let update output inf".split()
    + sorted(SPELLED)  # every function of the op table
    + ["h", "x", "D", "K", "S", "r", "T", "_a1", "inf_x"]
    + ["0", "1", "2.5", "1e-3", ".5", "1.", "1e999", "-1", "007"]
    + list("+-*/@=,()[]{}")
    + [".T", ".", "#", "\n", "^", "**", ";", "$", '"', "'"]
)


@st.composite
def token_soup(draw, max_tokens: int = 40) -> str:
    """Keywords, names, numbers, operators and brackets in random order."""
    tokens = draw(st.lists(st.sampled_from(_TOKENS), max_size=max_tokens))
    sep = draw(st.sampled_from([" ", "", "\n"]))
    body = sep.join(tokens)
    if draw(st.booleans()):
        body = "recurrence r {\n" + body + "\n}"
    return body


_TOKEN_RE = r"[A-Za-z_][A-Za-z_0-9]*|\d+\.?\d*(?:[eE][+-]?\d+)?|\.T|\S|\n"


@st.composite
def mutated_spec(draw) -> str:
    """A valid generated spec with a few tokens deleted, repeated, swapped or replaced."""
    source, _ = draw(spec_of())
    tokens = re.findall(_TOKEN_RE, source)
    for _ in range(draw(st.integers(1, 4))):
        if not tokens:
            break
        i = draw(st.integers(0, len(tokens) - 1))
        j = draw(st.integers(0, len(tokens) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            del tokens[i]
        elif op == 1:
            tokens.insert(i, tokens[j])
        elif op == 2:
            tokens[i], tokens[j] = tokens[j], tokens[i]
        else:
            tokens[i] = draw(st.sampled_from(_TOKENS))
    return " ".join(t if t != "\n" else "\n" for t in tokens)


# specs/ of the source checkout this module lies in (recc/testing/ -> the repository root).
_ZOO = sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.rec"))
# Replacements that keep a spec well-formed but push it to the language's edges:
# infinite, overflowing, denormal and signed-zero constants; nasty names.
_EDGE_NUMBERS = ("inf", "1e309", "1e308", "0", "0.0", "1e-320", "1", "1e30", "2", "0.5")


@st.composite
def zoo_mutant(draw) -> str:
    """A bundled spec with an identifier renamed everywhere (to a keyword, a builtin or
    one of the generated code's own spellings), a number replaced by an edge value, or
    a few tokens deleted, repeated, swapped or replaced."""
    source = draw(st.sampled_from(_ZOO)).read_text()
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.integers(0, 2))
        if op == 0:  # rename one identifier consistently
            words = sorted(set(re.findall(r"\b[A-Za-z_][A-Za-z_0-9]*\b", source)))
            old = draw(st.sampled_from(words))
            new = draw(st.sampled_from(NASTY_NAMES + ("h", "x", "D", "exp", "sum", "inf")))
            source = re.sub(rf"\b{re.escape(old)}\b", new, source)
        elif op == 1:  # one number to an edge value
            numbers = list(re.finditer(r"(?<![\w.])\d+\.?\d*(?:[eE][+-]?\d+)?", source))
            if numbers:
                m = draw(st.sampled_from(numbers))
                value = draw(st.sampled_from(_EDGE_NUMBERS))
                source = source[: m.start()] + value + source[m.end() :]
        else:
            tokens = re.findall(_TOKEN_RE, source)
            i = draw(st.integers(0, len(tokens) - 1))
            j = draw(st.integers(0, len(tokens) - 1))
            kind = draw(st.integers(0, 3))
            if kind == 0:
                del tokens[i]
            elif kind == 1:
                tokens.insert(i, tokens[j])
            elif kind == 2:
                tokens[i], tokens[j] = tokens[j], tokens[i]
            else:
                tokens[i] = draw(st.sampled_from(_TOKENS))
            source = " ".join(tokens)
    return source


printable_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from("\n\t"),
    max_size=200,
)


# ---------------------------------------------------------------------------
# random expressions for the printer: every operator, nested, fully parenthesised
# ---------------------------------------------------------------------------

_EXPR_HEADER = """recurrence exprs {
  dims D, E
  input s, d[D], e[E]
  param W[D, E], M[E, D], A[D, D], C[E, E], p, q[D]
  state h[D] = 0
"""
# What each name is, by shape. No [D] x [D, D] elementwise mix: that broadcast is ambiguous.
_BY_SHAPE = {
    (): ["s", "p"],
    ("D",): ["d", "q", "h"],
    ("E",): ["e"],
    ("D", "E"): ["W"],
    ("E", "D"): ["M"],
    ("D", "D"): ["A"],
    ("E", "E"): ["C"],
}
_UNARY_FUNCS = (
    "exp",
    "exp2",
    "log",
    "sigmoid",
    "log_sigmoid",
    "tanh",
    "softplus",
    "relu",
    "silu",
    "sqrt",
    "abs",
    "cos",
    "sin",
)
# pow's exponents: each way the Triton printer writes x ** p (recc.backends.triton.tile._pow)
_POW_EXPONENTS = ("0", "1", "2", "3", "-1", "-2", "0.5", "-0.5", "1.5", "-2.5", "5", "0.3")


def _number(value: float) -> str:
    return repr(value) if value != float("inf") else "inf"


@st.composite
def typed_expr(draw, shape: tuple[str, ...], depth: int = 3) -> str:
    """A well-shaped, fully parenthesised expression of `shape` using every construct."""
    if depth == 0 or draw(st.integers(0, 5)) == 0:
        if shape == () and draw(st.booleans()):
            x = draw(st.floats(min_value=0, allow_nan=False) | st.sampled_from([0.0, 1.0, 0.1]))
            return _number(x)
        return draw(st.sampled_from(_BY_SHAPE[shape]))
    sub = lambda s: draw(typed_expr(s, depth - 1))  # noqa: E731
    kind = draw(st.integers(0, 7))
    if kind == 0:  # elementwise binary, same shape
        op = draw(st.sampled_from(["+", "-", "*", "/"]))
        return f"({sub(shape)}) {op} ({sub(shape)})"
    if kind == 1:  # binary with a broadcast operand (scalar, or a vector into a matrix)
        smaller = [()] + (
            [shape[:1], shape[1:]] if len(shape) == 2 and shape[0] != shape[1] else []
        )
        small = draw(st.sampled_from(smaller))
        a, b = sub(shape), sub(small)
        if draw(st.booleans()):
            a, b = b, a
        op = draw(st.sampled_from(["+", "-", "*", "/", "max", "min"]))
        return f"{op}({a}, {b})" if op in ("max", "min") else f"({a}) {op} ({b})"
    if kind == 2:
        return f"-({sub(shape)})"
    if kind == 3:
        if draw(st.integers(0, 4)) == 0:
            return f"pow({sub(shape)}, {draw(st.sampled_from(_POW_EXPONENTS))})"
        return f"{draw(st.sampled_from(_UNARY_FUNCS))}({sub(shape)})"
    if kind == 4 and len(shape) == 2:  # transpose, both spellings
        t = sub(shape[::-1])
        return f"({t}).T" if draw(st.booleans()) else f"transpose({t})"
    if kind == 4 and len(shape) == 1:  # matvec / vecmat
        k = draw(st.sampled_from(["D", "E"]))
        if draw(st.booleans()):
            return f"({sub((shape[0], k))}) @ ({sub((k,))})"
        return f"({sub((k,))}) @ ({sub((k, shape[0]))})"
    if kind == 4:  # scalar: sum, dot, vector @ vector
        k = draw(st.sampled_from(["D", "E"]))
        form = draw(st.integers(0, 2))
        if form == 0:
            return f"sum({sub(draw(st.sampled_from([(k,), ('D', 'E'), ()])))})"
        if form == 1:
            return f"dot({sub((k,))}, {sub((k,))})"
        return f"({sub((k,))}) @ ({sub((k,))})"
    if kind == 5 and len(shape) == 2:
        if draw(st.booleans()):
            return f"outer({sub(shape[:1])}, {sub(shape[1:])})"
        k = draw(st.sampled_from(["D", "E"]))
        return f"({sub((shape[0], k))}) @ ({sub((k, shape[1]))})"
    if kind == 6 and len(shape) == 1:
        return f"({sub(())}) * ({sub(shape)})"
    return f"({sub(shape)})"


@st.composite
def expression_spec(draw) -> str:
    """A spec whose lets, update and outputs are random expressions of every shape."""
    lines = [_EXPR_HEADER]
    shapes = [(), ("D",), ("E",), ("D", "E"), ("E", "D")]
    for i in range(draw(st.integers(1, 3))):
        lines.append(f"  let l{i} = {draw(typed_expr(draw(st.sampled_from(shapes))))}\n")
    lines.append(f"  update h = {draw(typed_expr(('D',)))}\n")
    out = draw(typed_expr(draw(st.sampled_from(shapes))))
    words = set(re.findall(r"(?<![\d.])[A-Za-z_][A-Za-z_0-9]*", out)) - {
        "inf",
        "pow",
        *_UNARY_FUNCS,
    }
    if not words - {"max", "min", "sum", "dot", "outer", "transpose"}:
        out = f"({out}) + 0 * s"  # an output must read something
    lines.append(f"  output o = {out}\n")
    if draw(st.booleans()):
        lines.append("  output h\n")
    return "".join(lines) + "}\n"

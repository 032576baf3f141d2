"""The bundled zoo (specs/): every spec loads, runs, is differentiable, and classifies.

For each spec: the interpreter runs it on small random inputs (with and without
heads) and gives finite outputs of the documented shapes; autograd through the
interpreter reaches every input, param and initial state, and agrees with finite
differences; and the classifier (recc.analysis.analyze) finds the class the
equations say it is (the EXPECTED table).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recc.interpreter import run
from recc.ir import Recurrence, load
from recc.signature import bind

SPECS = Path(__file__).resolve().parent.parent / "specs"

# Distinct sizes per dim, so that a transposed or swapped axis cannot go unnoticed.
SIZES = {"D": 3, "N": 2, "K": 3, "V": 2, "I": 4, "P": 2}
B, T, H = 2, 5, 2

# spec -> (class, details). Details: the Jacobian structure d(new state)/d(old state)
# and, per class, block size (diagonal), rank (dplr) or semiring (minmax).
EXPECTED: dict[str, tuple[str, dict]] = {
    # diagonal: s' = a * s + b with state-free a, b (matrix states: decay * S + injection).
    "mingru": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    "ema": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),  # a scalar state
    "minlstm": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    "hgrn": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    "qrnn": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    "sru": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    "rglru": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    # LRU: (h_re, h_im) coupled channel by channel by the 2x2 rotation-scaling block.
    "lru": ("diagonal", {"jacobian": "block", "block_size": 2}),
    "mamba_s6": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    "retnet": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    "gla": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    "mamba2": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    # mLSTM (unstabilised): C and n are two independent diagonal recurrences.
    "mlstm": ("diagonal", {"jacobian": "diagonal", "block_size": 1}),
    # dplr: S' = S (diag(d) + sum_r u_r w_r^T) + B; S @ u couples the columns: dense.
    "deltanet": ("dplr", {"jacobian": "dense", "rank": 1}),
    "gated_deltanet": ("dplr", {"jacobian": "dense", "rank": 1}),
    "deltaproduct": ("dplr", {"jacobian": "dense", "rank": 2}),
    "rwkv7": ("dplr", {"jacobian": "dense", "rank": 1}),
    # minmax: elementwise max / min / + of the state with state-free operands.
    "minmax_rnc": ("minmax", {"jacobian": "diagonal", "semiring": "max-min"}),
    "maxplus": ("minmax", {"jacobian": "diagonal", "semiring": "max-plus"}),
    # nonlinear, dense recurrent weights W_hh @ h.
    "elman": ("nonlinear", {"jacobian": "dense"}),
    "gru": ("nonlinear", {"jacobian": "dense"}),
    "lstm": ("nonlinear", {"jacobian": "dense"}),
    # nonlinear, diagonal recurrent weights: element i of h' reads element i of h only.
    "paragru": ("nonlinear", {"jacobian": "diagonal"}),
    "indrnn": ("nonlinear", {"jacobian": "diagonal"}),
    # ParaLSTM: c'_i and h'_i read c_i and h_i: 2x2 blocks (one element of c, one of h).
    "paralstm": ("nonlinear", {"jacobian": "block", "block_size": 2}),
    # sLSTM: every gate reads R_* @ h with R_* [D, D], so each of c', n', m', h' depends
    # on all of h: dense over D. (Called with heads and R as [H, D, D], the full Jacobian
    # is block-diagonal per head, but within the spec's own dims it is dense.)
    "slstm": ("nonlinear", {"jacobian": "dense"}),
    # LTC: the liquid time constant f = sigmoid(W_h @ h + ...) mixes all channels of h,
    # and the update multiplies f by h (not affine): nonlinear, dense.
    "ltc": ("nonlinear", {"jacobian": "dense"}),
}

ZOO = sorted(p.stem for p in SPECS.glob("*.rec"))


def spec(name: str) -> Recurrence:
    return load(SPECS / f"{name}.rec")


def make_call(
    rec: Recurrence,
    batch: int = B,
    steps: int = T,
    heads: int | None = None,
    param_heads: bool = False,
    sizes: dict[str, int] = SIZES,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random fp64 leaf tensors for every input and param, and random initial states."""
    lead = (heads,) if heads else ()
    plead = lead if param_heads else ()

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, dtype=torch.float64) * 0.5

    tensors = {}
    for d in rec.inputs:
        tensors[d.name] = rand(batch, steps, *lead, *(sizes[x] for x in d.dims))
    for d in rec.params:
        tensors[d.name] = rand(*plead, *(sizes[x] for x in d.dims))
    init = {s.name: rand(batch, *lead, *(sizes[x] for x in s.dims)) for s in rec.states}
    # Domains the equations need: a positive time constant and Euler step (LTC), a
    # positive normaliser (sLSTM's n, which its update keeps positive); and MinMax gates
    # spread over (0, 1) and an initial state in (0, 1), so that every routing happens and
    # no gradient (a 0/1 selection) is zero everywhere.
    if rec.name == "ltc":
        tensors["tau"] = tensors["tau"].abs() + 0.5
        tensors["dt"] = tensors["dt"].abs() * 0.2 + 0.05
    if rec.name == "slstm":
        init["n"] = init["n"].abs() + 0.5
    if rec.name == "minmax_rnc":
        tensors["xa"], tensors["xb"] = tensors["xa"] * 4, tensors["xb"] * 4
        init["h"] = torch.rand(init["h"].shape, dtype=torch.float64)
    for t in [*tensors.values(), *init.values()]:
        t.requires_grad_()
    return tensors, init


def test_zoo_is_complete() -> None:
    assert ZOO == sorted(EXPECTED)


@pytest.mark.parametrize("name", ZOO)
def test_spec_has_citation_line(name: str) -> None:
    first = (SPECS / f"{name}.rec").read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 40, first


@pytest.mark.parametrize("heads", [None, H], ids=["no-heads", "heads"])
@pytest.mark.parametrize("name", ZOO)
def test_runs_with_default_initial_state(name: str, heads: int | None) -> None:
    rec = spec(name)
    tensors, _ = make_call(rec, heads=heads, param_heads=heads is not None)
    outputs, finals = run(rec, bind(rec, tensors))
    lead = (B, T, heads) if heads else (B, T)
    assert set(outputs) == {o.name for o in rec.outputs}
    for o in rec.outputs:
        y = outputs[o.name]
        assert y.shape == (*lead, *(SIZES[d] for d in o.expr.dims)), o.name
        assert y.dtype == torch.float64
        assert torch.isfinite(y).all(), o.name
    for s in rec.states:
        f = finals[s.name]
        assert f.shape == (*lead[:1], *lead[2:], *(SIZES[d] for d in s.dims)), s.name
        assert torch.isfinite(f).all(), s.name


@pytest.mark.parametrize("name", ZOO)
def test_gradients_reach_every_input_param_and_initial_state(name: str) -> None:
    rec = spec(name)
    tensors, init = make_call(rec)
    outputs, finals = run(rec, bind(rec, tensors, init))
    loss = sum((y * torch.randn_like(y)).sum() for y in [*outputs.values(), *finals.values()])
    leaves = {**tensors, **{f"initial {k}": v for k, v in init.items()}}
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    for (what, leaf), g in zip(leaves.items(), grads):
        assert g is not None, f"no gradient reaches {what}"
        assert g.shape == leaf.shape
        assert torch.isfinite(g).all(), what
        assert g.abs().sum() > 0, f"gradient of {what} is identically zero"


@pytest.mark.parametrize("name", ZOO)
def test_interpreter_gradients_match_finite_differences(name: str) -> None:
    rec = spec(name)
    small = {"D": 2, "N": 2, "K": 2, "V": 3, "I": 2, "P": 2}
    tensors, init = make_call(rec, batch=1, steps=3, sizes=small)
    names, inits = list(tensors), list(init)

    def f(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        call = dict(zip(names, args[: len(names)]))
        start = dict(zip(inits, args[len(names) :]))
        outputs, finals = run(rec, bind(rec, call, start))
        return (*outputs.values(), *finals.values())

    assert torch.autograd.gradcheck(f, (*tensors.values(), *init.values()), fast_mode=True)


@pytest.mark.parametrize("name", ZOO)
def test_params_without_heads_broadcast_over_heads(name: str) -> None:
    """Params given without the leading H equal the same params repeated per head."""
    rec = spec(name)
    tensors, init = make_call(rec, heads=H)
    outputs, finals = run(rec, bind(rec, tensors, init))
    param_names = {p.name for p in rec.params}
    repeated = {
        k: (v.detach().expand(H, *v.shape) if k in param_names else v.detach())
        for k, v in tensors.items()
    }
    outputs2, finals2 = run(rec, bind(rec, repeated, init))
    # Equal to fp64 rounding, not bit for bit: a shared [D, D] weight and a per-head
    # [H, D, D] one take different matmul kernels (mm vs bmm), whose summation order
    # depends on the machine's BLAS (one machine differs by 5e-17).
    for k in outputs:
        torch.testing.assert_close(outputs[k], outputs2[k], rtol=1e-13, atol=1e-15)
    for k in finals:
        torch.testing.assert_close(finals[k], finals2[k], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("name", ZOO)
def test_classification(name: str) -> None:
    from recc.analysis import analyze

    kind, details = EXPECTED[name]
    a = analyze(spec(name))
    assert a.kind == kind, a.reasons
    assert a.form.kind == kind
    assert a.jacobian.kind == details["jacobian"], a.jacobian.describe()
    assert a.jacobian.affine == (kind in ("diagonal", "dplr"))
    if a.jacobian.kind == "block":
        assert a.jacobian.block_size == details["block_size"]
    if kind == "diagonal":
        assert a.form.block_size == details["block_size"]
        covered = sorted(s for block in a.form.blocks for s in block.states)
        assert covered == sorted(s.name for s in spec(name).states)
    if kind == "dplr":
        assert a.rank == details["rank"]
        assert a.form.rank == details["rank"]
        assert a.form.state == "S"
    if kind == "minmax":
        assert a.semiring == details["semiring"]
        assert a.form.semiring == details["semiring"]
        assert set(a.form.coefficients) == {s.name for s in spec(name).states}

"""Packed variable-length batches (`cu_seqlens`) on every lowering and backend.

A packed call of N sequences must equal N separate calls, each from its own initial
state: outputs, final states and every gradient (inputs, params, initial states).
fla#837 (wrong varlen gradients) and fla#1140 (wrong gradients on very short chunks)
are the failures this guards against: sequences of length 0 and 1, sequences that
end mid-chunk and ones that span several chunks. The reference is the interpreter,
called once per sequence, in fp64.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import recc
from recc.analysis import analyze
from recc.backends.torch.chunkwise import run_chunkwise
from recc.errors import RecError
from recc.ir import load
from recc.lowering import plan
from recc.signature import bind
from recc.testing.regimes import NORMAL

ROOT = Path(__file__).resolve().parent.parent
CHUNKWISE_ZOO = ("gla", "retnet", "mamba2", "deltanet", "gated_deltanet", "deltaproduct", "rwkv7")
# (spec, backend, strategy): the scan takes one sequence a call (per_sequence)
ONE_SEQUENCE_A_CALL = (
    ("mingru", "torch", "auto"),
    ("mamba_s6", "torch", "auto"),
    ("maxplus", "torch", "auto"),
    ("gla", "torch", "scan"),
    ("gla", "torch", "auto"),  # T < 64: the scan, one call per sequence; else chunkwise
    ("gru", "interpreter", "auto"),
    ("mingru", "triton", "auto"),
)
RTOL = 1e-9  # fp64 throughout; the packed and separate calls do the same arithmetic


def _call(rec, offsets, heads, seed):
    """(tensors of one packed row, initial states one row per sequence), fp64."""
    T, N = offsets[-1], len(offsets) - 1
    tensors, _ = NORMAL.call(rec, T, seed=seed, B=1, heads=heads)
    _, init = NORMAL.call(rec, 1, seed=seed + 1, B=N, heads=heads)
    return tensors, init


def _leaves(tensors, init):
    leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    states = {k: v.clone().requires_grad_() for k, v in init.items()}
    return leaves, states


def _loss(outs, finals, weights):
    total = sum((o * w).sum() for o, w in zip(outs, weights["out"]))
    return total + sum((f * w).sum() for f, w in zip(finals, weights["final"]))


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def packed_and_separate(rec, run_packed, offsets, heads, seed):
    """Results and gradients of the packed call (`run_packed(tensors, init, offsets)`)
    and of one interpreter call per sequence."""
    tensors, init = _call(rec, offsets, heads, seed)
    interp = recc.compile(rec.source, backend="interpreter")

    leaves, states = _leaves(tensors, init)
    outs, finals = run_packed(leaves, states, offsets)
    g = torch.Generator().manual_seed(seed + 2)
    weights = {
        "out": [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in outs],
        "final": [torch.randn(f.shape, generator=g, dtype=f.dtype) for f in finals],
    }
    _loss(outs, finals, weights).backward()
    packed = (outs, finals, leaves, states)

    leaves2, states2 = _leaves(tensors, init)
    inputs = {i.name for i in rec.inputs}
    pieces = [[] for _ in outs]
    ends = [[] for _ in finals]
    for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
        row = {k: v[i : i + 1] for k, v in states2.items()}
        if a == b:
            for j, s in enumerate(rec.states):
                ends[j].append(row[s.name])
            continue
        one = {k: (v[:, a:b] if k in inputs else v) for k, v in leaves2.items()}
        o, f = interp(**one, initial_state=row, output_final_state=True, check_nan=False)
        for j, x in enumerate(_as_tuple(o)):
            pieces[j].append(x)
        for j, x in enumerate(_as_tuple(f)):
            ends[j].append(x)
    if not any(pieces):  # no steps at all: the outputs of a call of none
        row = {k: v[:1] for k, v in states2.items()}
        o, _ = interp(**leaves2, initial_state=row, output_final_state=True, check_nan=False)
        pieces = [[x] for x in _as_tuple(o)]
    outs2 = [torch.cat(p, dim=1) for p in pieces]
    finals2 = [torch.cat(e, dim=0) for e in ends]
    _loss(outs2, finals2, weights).backward()
    separate = (outs2, finals2, leaves2, states2)
    return packed, separate


def assert_same(packed, separate, where):
    def close(a, b, what):
        assert a.shape == b.shape, f"{where} {what}: shape {list(a.shape)} vs {list(b.shape)}"
        scale = b.abs().max().item() if b.numel() else 0.0
        err = (a - b).abs().max().item() if b.numel() else 0.0
        assert err <= RTOL * max(scale, 1.0), f"{where} {what}: max |diff| {err:.3g}"

    (o1, f1, g1, s1), (o2, f2, g2, s2) = packed, separate
    for i, (a, b) in enumerate(zip(o1, o2)):
        close(a, b, f"output {i}")
    for i, (a, b) in enumerate(zip(f1, f2)):
        close(a, b, f"final state {i}")

    def grad(leaf):  # no gradient is a zero gradient (nothing reached the leaf)
        return torch.zeros_like(leaf) if leaf.grad is None else leaf.grad

    for k in g2:
        close(grad(g1[k]), grad(g2[k]), f"grad {k}")
    for k in s2:
        close(grad(s1[k]), grad(s2[k]), f"grad initial state {k}")


def _through_compile(rec, backend, strategy):
    fn = recc.compile(rec.source, backend=backend, strategy=strategy)

    def run(tensors, init, offsets):
        o, f = fn(
            **tensors,
            initial_state=init,
            output_final_state=True,
            cu_seqlens=torch.tensor(offsets),
            check_nan=False,
        )
        return list(_as_tuple(o)), list(_as_tuple(f))

    return run


def _chunked(rec, L):
    lowering = plan(rec, analyze(rec))

    def run(tensors, init, offsets):
        bound = bind(rec, tensors, init, check_nan=False, cu_seqlens=offsets)
        outputs, finals = run_chunkwise(lowering.chunk, bound, L)
        return [outputs[o.name] for o in rec.outputs], [finals[s.name] for s in rec.states]

    return run


OFFSETS = (
    [0, 5, 5, 70, 100],  # an empty sequence; one ending mid-chunk; one spanning chunks
    [0, 1, 2, 3],  # sequences of one step
    [0, 16, 32, 64],  # chunk-aligned
    [0, 0],  # nothing at all
    [0, 130],  # one sequence
)


def _spec(name):
    rec = load(ROOT / "specs" / f"{name}.rec")
    return rec


@pytest.mark.parametrize("name", CHUNKWISE_ZOO)
def test_chunkwise_packs_sequences_as_separate_calls(name):
    rec = _spec(name)
    for i, offsets in enumerate(OFFSETS):
        for L in (16, 64):
            heads = (None, 2)[(i + L) % 2]
            found = packed_and_separate(rec, _chunked(rec, L), offsets, heads, seed=i)
            assert_same(*found, f"{name} {offsets} L={L} heads={heads}")


@pytest.mark.parametrize("name", ("gla", "gated_deltanet"))
def test_packed_calls_through_compile_take_the_chunkwise_path(name, monkeypatch):
    """recc.compile's default on torch: chunkwise for the packed call (T >= 64), one
    call, not one per sequence."""
    from recc.backends.torch import backend as torch_backend

    calls = []
    for module in (recc.api, torch_backend):  # wherever a call could be split
        monkeypatch.setattr(module, "per_sequence", lambda *a: calls.append(a))
    rec = _spec(name)
    run = _through_compile(rec, "torch", "auto")
    found = packed_and_separate(rec, run, [0, 7, 70, 71, 140], 2, seed=3)
    assert_same(*found, name)
    assert not calls


@pytest.mark.parametrize(("name", "backend", "strategy"), ONE_SEQUENCE_A_CALL)
def test_backends_without_packing_run_one_call_per_sequence(name, backend, strategy):
    rec = _spec(name)
    run = _through_compile(rec, backend, strategy)
    small = [[0, 3, 3, 9, 10], [0, 0]] if backend == "triton" else OFFSETS[:4]
    for i, offsets in enumerate(small):
        found = packed_and_separate(rec, run, offsets, (None, 2)[i % 2], seed=10 + i)
        assert_same(*found, f"{name} on {backend} {offsets}")


@settings(max_examples=15, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 40), min_size=1, max_size=5),
    name=st.sampled_from(("gla", "gated_deltanet", "deltaproduct")),
    L=st.sampled_from((16, 32)),
)
def test_drawn_packings_agree_with_separate_calls(lengths, name, L):
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    rec = _spec(name)
    found = packed_and_separate(rec, _chunked(rec, L), offsets, 2, seed=sum(lengths))
    assert_same(*found, f"{name} {offsets} L={L}")


def _mingru_call(T=6):
    fn = recc.compile(ROOT / "specs" / "mingru.rec", backend="torch")
    x = {"k": torch.randn(1, T, 3), "v": torch.randn(1, T, 3)}
    return fn, x


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        (torch.tensor([0.0, 6.0]), "cu_seqlens has dtype torch.float32"),
        (torch.tensor([[0, 6]]), r"cu_seqlens has shape \[1, 2\]; it is 1-D"),
        ([0, 2.5, 6], "cu_seqlens must be an integer tensor or a list of ints"),
        ("0,6", "cu_seqlens must be an integer tensor or a list of ints, got str"),
        ([1, 6], "must start at 0 and end at the inputs' length T=6"),
        ([0, 5], "must start at 0 and end at the inputs' length T=6"),
        ([0], "must start at 0"),
        ([0, 4, 3, 6], r"cu_seqlens decreases at position 2 \(4 then 3\)"),
    ],
)
def test_bad_cu_seqlens_are_clear_errors(offsets, message):
    fn, x = _mingru_call()
    with pytest.raises(RecError, match=message):
        fn(**x, cu_seqlens=offsets)


def test_cu_seqlens_needs_batch_one_and_a_state_row_per_sequence():
    fn, x = _mingru_call()
    with pytest.raises(RecError, match="inputs have batch 1; got B=2"):
        fn(k=torch.randn(2, 6, 3), v=torch.randn(2, 6, 3), cu_seqlens=[0, 3, 6])
    with pytest.raises(RecError, match=r"N = len\(cu_seqlens\) - 1 = 2"):
        fn(**x, cu_seqlens=[0, 3, 6], initial_state=torch.zeros(1, 3))
    y, h = fn(**x, cu_seqlens=[0, 3, 6], initial_state=torch.zeros(2, 3), output_final_state=True)
    assert y.shape == (1, 6, 3) and h.shape == (2, 3)

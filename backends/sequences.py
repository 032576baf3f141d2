"""Packed variable-length batches (`cu_seqlens`) for executors that take one sequence.

Stage: after lowering. A packed call holds N sequences of one batch row, sequence i
at steps `cu_seqlens[i]:cu_seqlens[i+1]`, its initial and final states row i of the
states (flash-linear-attention's convention). An executor whose backend does not
take packed calls itself (`Backend.takes_packed`) runs once per sequence here: the
inputs sliced along time, the states by row, the outputs concatenated along time and
the final states stacked. Exact, and autograd flows through the slices; it costs one
executor call per sequence (the torch chunkwise path packs instead: one call).
"""

from __future__ import annotations

import dataclasses

import torch

from recc.backends.protocol import Call, Executor


def per_sequence(executor: Executor, call: Call):
    """(outputs, final states) of a packed call, one executor call per sequence."""
    bound = call.bound
    offsets = bound.cu_seqlens
    assert offsets is not None, "per_sequence takes a packed call"
    inputs = set(bound.inputs)
    pieces: dict[str, list[torch.Tensor]] = {}
    finals: dict[str, list[torch.Tensor]] = {k: [] for k in bound.initial_state}
    for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
        row = slice(i, i + 1)
        if a == b:  # an empty sequence: no outputs, and it ends where it starts
            for k, v in bound.initial_state.items():
                finals[k].append(v[row])
            continue
        one = dataclasses.replace(
            bound,
            T=b - a,
            inputs={k: v[:, a:b] for k, v in bound.inputs.items()},
            initial_state={k: v[row] for k, v in bound.initial_state.items()},
            cu_seqlens=None,
        )
        tensors = {k: (v[:, a:b] if k in inputs else v) for k, v in call.tensors.items()}
        states = {k: v[row] for k, v in call.initial_state.items()}
        outputs, ends = executor(Call(one, tensors, states))
        for k, v in outputs.items():
            pieces.setdefault(k, []).append(v)
        for k, v in ends.items():
            finals[k].append(v)
    outputs = {k: torch.cat(v, dim=1) for k, v in pieces.items()}
    if not pieces:  # every sequence empty (T = 0): one call of no steps gives the shapes
        zero = {k: v[:1] for k, v in bound.initial_state.items()}
        empty = dataclasses.replace(bound, initial_state=zero, cu_seqlens=None)
        outputs, _ = executor(Call(empty, call.tensors, {}))
    return outputs, {k: torch.cat(v, dim=0) for k, v in finals.items()}

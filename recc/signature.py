"""Binding a call's tensors to a spec: names, shapes, dims, dtypes, devices.

Stage: runtime. Shared by every executor (interpreter and backends) so a
wrong call fails the same way everywhere: a `RecError` naming the tensor, the
shape that was expected and the shape that came. The checks themselves are in
`recc.binding`, a standalone module that `recc build` copies into built
modules; this is its adapter for a `Recurrence` (`signature_of`), raising
recc's `RecError`.

Call convention (batch-first, time second, like flash-linear-attention):
  input `k[D]`   -> `[B, T, D]` or `[B, T, H, D]`
  param `A[D,N]` -> `[D, N]` or `[H, D, N]` (heads only if the inputs have them)
  state `h[D]`   -> `[B, D]` or `[B, H, D]`
bf16/fp16 inputs are computed in fp32 and outputs returned in the input dtype.
"""

from __future__ import annotations

from typing import Any

from recc import binding
from recc.binding import Bound
from recc.errors import RecError
from recc.ir.nodes import Recurrence


def signature_of(rec: Recurrence) -> dict:
    """What binding needs of a spec, as plain data (see `recc.binding`)."""
    return {
        "name": rec.name,
        "inputs": tuple((i.name, i.dims) for i in rec.inputs),
        "params": tuple((p.name, p.dims) for p in rec.params),
        "dim_values": tuple(rec.dim_values),
        "states": tuple((s.name, s.dims, float(s.init)) for s in rec.states),
        "outputs": tuple((o.name, o.expr.dims) for o in rec.outputs),
    }


def bind(
    rec: Recurrence,
    tensors: dict[str, Any],
    initial_state: Any = None,
    check_nan: bool = True,
    finite_states: frozenset[str] = frozenset(),
    cu_seqlens: Any = None,
) -> Bound:
    """Check a call's arguments against the spec and bind dim sizes.

    `check_nan`: reject NaN in inputs, params and initial states (one
    reduction per tensor; on a GPU it waits for the data). With False, NaN
    propagates like any torch op: to the outputs at and after its step.
    `finite_states`: states whose initial value must also be free of +-inf (those
    a linear recurrence reads). `cu_seqlens`: packed sequences of one batch row
    (`recc.binding.check_cu_seqlens`); states then have one row per sequence.

    The computation runs in fp64 if any input, param or initial state is
    fp64, else in fp32; outputs come back in the inputs' and params' promoted
    dtype, final states in the compute dtype.
    """
    return binding.bind(
        signature_of(rec),
        tensors,
        initial_state,
        check_nan,
        finite_states,
        error=RecError,
        cu_seqlens=cu_seqlens,
    )


def initial_states(rec: Recurrence, initial_state: Any) -> dict[str, Any]:
    """`initial_state` as given to a call (None, a tensor, a tuple or a dict) as a dict."""
    return binding.initial_states(signature_of(rec), initial_state, error=RecError)


__all__ = ["Bound", "bind", "initial_states", "signature_of"]

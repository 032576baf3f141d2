"""Binding a call's tensors to a spec: names, shapes, dims, dtypes, devices.

Stage: runtime. Shared by every executor (interpreter and backends) so a
wrong call fails the same way everywhere: a `RecError` naming the tensor, the
shape that was expected and the shape that came.

Call convention (batch-first, time second, like flash-linear-attention):
  input `k[D]`   -> `[B, T, D]` or `[B, T, H, D]`
  param `A[D,N]` -> `[D, N]` or `[H, D, N]` (heads only if the inputs have them)
  state `h[D]`   -> `[B, D]` or `[B, H, D]`
bf16/fp16 inputs are computed in fp32 and outputs returned in the input dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from recc.errors import RecError
from recc.ir.nodes import Recurrence

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Bound:
    B: int
    T: int
    H: int | None
    sizes: dict[str, int]
    inputs: dict[str, torch.Tensor]  # [B, T, (H), *dims], compute dtype
    params: dict[str, torch.Tensor]  # [(H), *dims], compute dtype; and dims read as values
    initial_state: dict[str, torch.Tensor]  # [B, (H), *dims], compute dtype
    compute_dtype: torch.dtype
    out_dtype: torch.dtype
    device: torch.device

    @property
    def batch_heads(self) -> tuple[int, ...]:
        return () if self.H is None else (self.H,)

    def shape_of(self, dims: tuple[str, ...]) -> tuple[int, ...]:
        return tuple(self.sizes[d] for d in dims)


def _layout(dims: tuple[str, ...], lead: str) -> str:
    """`[B, T, D]` from dims ("D",) and the leading axes "B, T"."""
    parts = [p.strip() for p in lead.split(",") if p.strip()] + list(dims)
    return "[" + ", ".join(parts) + "]"


_TIME_HINT = "inputs are batch-first, time second: [batch, time, (heads,) *dims]"


def _check_tensor(kind: str, name: str, value: Any) -> torch.Tensor:
    """Type, dtype and layout; the values are checked once devices agree (`_check_values`)."""
    if not isinstance(value, torch.Tensor):
        raise RecError(
            f"{kind} '{name}' must be a torch.Tensor, got {type(value).__name__}",
            hint="convert it with torch.as_tensor(...)",
        )
    if value.layout != torch.strided:
        raise RecError(
            f"{kind} '{name}' is a {str(value.layout).removeprefix('torch.')} tensor; "
            "recc takes dense (strided) tensors",
            hint=f"pass {name}.to_dense()",
        )
    if value.dtype not in _FLOATS:
        raise RecError(
            f"{kind} '{name}' has dtype {value.dtype}; recc takes float16, bfloat16, "
            "float32 or float64",
            hint=f"cast it, e.g. {name}.float()",
        )
    return value


def _check_values(kind: str, name: str, value: torch.Tensor, check_nan: bool, finite: bool) -> None:
    """NaN (unless check_nan=False) and, where `finite`, inf: one reduction per tensor.
    Meta tensors have no values to check."""
    if value.device.type == "meta" or value.numel() == 0:
        return
    if not (check_nan or finite):
        return
    total = value.sum()
    if torch.isfinite(total):  # no NaN and no inf (a finite sum of finite values)
        return
    if check_nan and torch.isnan(value).any():
        raise RecError(
            f"{kind} '{name}' contains NaN",
            hint="recc rejects NaN in inputs, params and initial states (inf is allowed), "
            "or pass check_nan=False to let it propagate",
        )
    if finite and torch.isinf(value).any():
        raise RecError(
            f"{kind} '{name}' contains inf, and this recurrence is linear in its state",
            hint="from an infinite start a linear state stays infinite or becomes NaN "
            "(0 * inf): start it from a finite value (only MinMax and nonlinear "
            "recurrences may start at +-inf)",
        )


def bind(
    rec: Recurrence,
    tensors: dict[str, Any],
    initial_state: Any = None,
    check_nan: bool = True,
    finite_states: frozenset[str] = frozenset(),
) -> Bound:
    """Check a call's arguments against the spec and bind dim sizes.

    `check_nan`: reject NaN in inputs, params and initial states (one
    reduction per tensor; on a GPU it waits for the data). With False, NaN
    propagates like any torch op: to the outputs at and after its step.
    `finite_states`: states whose initial value must also be free of +-inf (those
    a linear recurrence reads).

    The computation runs in fp64 if any input, param or initial state is
    fp64, else in fp32; outputs come back in the inputs' and params' promoted
    dtype, final states in the compute dtype.
    """
    inputs = {i.name: i for i in rec.inputs}
    params = {p.name: p for p in rec.params}
    unknown = [n for n in tensors if n not in inputs and n not in params]
    if unknown:
        names = ", ".join(list(inputs) + list(params))
        hint = f"it takes: {names}"
        if unknown[0] in {s.name for s in rec.states}:
            hint = f"'{unknown[0]}' is a state: pass initial_state={{'{unknown[0]}': ...}}"
        raise RecError(f"'{rec.name}' has no input or param named '{unknown[0]}'", hint=hint)
    missing = [n for n in [*inputs, *params] if n not in tensors]
    if missing:
        name = missing[0]
        decl = inputs.get(name) or params[name]
        kind = "input" if name in inputs else "param"
        shape = _layout(decl.dims, "B, T" if kind == "input" else "")
        raise RecError(f"missing {kind} '{name}'", hint=f"pass {name}= a tensor of shape {shape}")
    if not inputs:
        raise RecError(f"'{rec.name}' has no input, so the sequence length is unknown")

    sizes: dict[str, int] = {}
    origin: dict[str, str] = {}

    def bind_dims(kind: str, name: str, shape: tuple[int, ...], dims: tuple[str, ...], lead: str):
        for dim, size in zip(dims, shape):
            if dim in sizes and sizes[dim] != size:
                raise RecError(
                    f"{kind} '{name}' has {dim}={size}, but {origin[dim]} has {dim}={sizes[dim]}",
                    hint=f"every tensor with dim {dim} must agree on its size",
                )
            sizes.setdefault(dim, size)
            origin.setdefault(dim, f"{kind} '{name}'")

    first = next(iter(inputs.values()))
    x0 = _check_tensor("input", first.name, tensors[first.name])
    heads = x0.dim() == len(first.dims) + 3
    if x0.dim() not in (len(first.dims) + 2, len(first.dims) + 3):
        raise RecError(
            f"input '{first.name}' has shape {list(x0.shape)}; expected "
            f"{_layout(first.dims, 'B, T')} or {_layout(first.dims, 'B, T, H')}",
            hint=_TIME_HINT,
        )
    B, T = x0.shape[0], x0.shape[1]
    H = x0.shape[2] if heads else None
    device = x0.device
    lead = "B, T, H" if heads else "B, T"
    n_lead = 3 if heads else 2
    dtypes = []

    bound_inputs = {}
    for decl in inputs.values():
        x = _check_tensor("input", decl.name, tensors[decl.name])
        want = (B, T, *((H,) if heads else ()))
        if x.dim() != len(decl.dims) + n_lead or tuple(x.shape[:n_lead]) != want:
            raise RecError(
                f"input '{decl.name}' has shape {list(x.shape)}; "
                f"expected {_layout(decl.dims, lead)} with {lead} = {list(want)} "
                f"(from input '{first.name}')",
                hint=_TIME_HINT,
            )
        if x.device != device:
            raise RecError(
                f"input '{decl.name}' is on {x.device}, but '{first.name}' is on {device}",
                hint="move every tensor to one device",
            )
        bind_dims("input", decl.name, tuple(x.shape[n_lead:]), decl.dims, lead)
        bound_inputs[decl.name] = x
        dtypes.append(x.dtype)

    bound_params = {}
    for decl in params.values():
        p = _check_tensor("param", decl.name, tensors[decl.name])
        n_head = p.dim() - len(decl.dims)
        ok = n_head == 0 or (heads and n_head == 1 and p.shape[0] == H)
        if not ok:
            expect = _layout(decl.dims, "H" if heads else "")
            if heads:
                expect += f" or {_layout(decl.dims, '')}"
            raise RecError(
                f"param '{decl.name}' has shape {list(p.shape)}; expected {expect}",
                hint="params are time-invariant: no batch or time axes, "
                "optionally a leading heads axis when the inputs have one",
            )
        if p.device != device:
            raise RecError(
                f"param '{decl.name}' is on {p.device}, but input '{first.name}' is on {device}",
                hint="move every tensor to one device",
            )
        bind_dims("param", decl.name, tuple(p.shape[n_head:]), decl.dims, "")
        bound_params[decl.name] = p
        dtypes.append(p.dtype)

    states = initial_states(rec, initial_state)
    for s in rec.states:
        if s.name in states:
            x = _check_tensor("initial state", s.name, states[s.name])
            want_lead = (B, *((H,) if heads else ()))
            if (
                x.dim() != len(s.dims) + len(want_lead)
                or tuple(x.shape[: len(want_lead)]) != want_lead
            ):
                raise RecError(
                    f"initial state '{s.name}' has shape {list(x.shape)}; expected "
                    f"{_layout(s.dims, 'B, H' if heads else 'B')} with "
                    f"{'B, H' if heads else 'B'} = {', '.join(map(str, want_lead))}",
                    hint="a state's initial value has the batch (and heads) axes of the inputs",
                )
            if x.device != device:
                raise RecError(
                    f"initial state '{s.name}' is on {x.device}, but inputs are on {device}",
                    hint="move every tensor to one device",
                )
            bind_dims("initial state", s.name, tuple(x.shape[len(want_lead) :]), s.dims, "")

    for s in rec.states:
        for d in s.dims:
            if d not in sizes:
                raise RecError(
                    f"cannot tell the size of dim {d} of state '{s.name}' from the inputs",
                    hint=f"pass initial_state={{'{s.name}': ...}} of the full shape",
                )

    # values last: every tensor is on the one device by now (a meta tensor has none)
    for name, x in bound_inputs.items():
        _check_values("input", name, x, check_nan, finite=False)
    for name, x in bound_params.items():
        _check_values("param", name, x, check_nan, finite=False)
    for name, x in states.items():
        _check_values("initial state", name, x, check_nan, name in finite_states)

    out_dtype = dtypes[0]
    for d in dtypes[1:]:
        out_dtype = torch.promote_types(out_dtype, d)
    wide = out_dtype == torch.float64 or any(x.dtype == torch.float64 for x in states.values())
    compute = torch.float64 if wide else torch.float32

    init = {}
    for s in rec.states:
        shape = (B, *((H,) if heads else ()), *(sizes[d] for d in s.dims))
        if s.name in states:
            init[s.name] = states[s.name].to(compute)
        else:
            init[s.name] = torch.full(shape, s.init, dtype=compute, device=device)
    return Bound(
        B=B,
        T=T,
        H=H,
        sizes=sizes,
        inputs={k: v.to(compute) for k, v in bound_inputs.items()},
        params={
            **{k: v.to(compute) for k, v in bound_params.items()},
            # a dim read as a value (`q / sqrt(K)`): its size, a scalar
            **{
                d: torch.tensor(float(sizes[d]), dtype=compute, device=device)
                for d in rec.dim_values
            },
        },
        initial_state=init,
        compute_dtype=compute,
        out_dtype=out_dtype,
        device=device,
    )


def initial_states(rec: Recurrence, initial_state: Any) -> dict[str, Any]:
    """`initial_state` as given to a call (None, a tensor, a tuple or a dict) as a dict."""
    if initial_state is None:
        return {}
    names = [s.name for s in rec.states]
    if isinstance(initial_state, dict):
        unknown = [n for n in initial_state if n not in names]
        if unknown:
            raise RecError(
                f"initial_state names '{unknown[0]}', which is not a state",
                hint=f"states are: {', '.join(names)}",
            )
        return {k: v for k, v in initial_state.items() if v is not None}
    if isinstance(initial_state, (tuple, list)):
        if len(initial_state) != len(names):
            raise RecError(
                f"initial_state has {len(initial_state)} tensors; '{rec.name}' has "
                f"{len(names)} states ({', '.join(names)})",
            )
        return {n: v for n, v in zip(names, initial_state) if v is not None}
    if len(names) != 1:
        raise RecError(
            f"'{rec.name}' has {len(names)} states; pass initial_state as a dict or tuple",
            hint=f"e.g. initial_state={{'{names[0]}': ...}}",
        )
    return {names[0]: initial_state}

"""Binding a call's tensors to a spec given as data: names, shapes, dims, dtypes, devices.

Stage: runtime, standalone: this module imports only torch and the standard
library, never recc, because `recc build` copies its source into every built
module (which must run where recc is not installed). `recc.signature` is its
adapter for a `Recurrence`; both raise the same errors, worded the same.

A signature is plain data (what `recc build` writes as a literal):

    {"name": "mingru",
     "inputs": (("x", ("D",)), ...),        # every input, in declaration order
     "params": (("W", ("D", "N")), ...),    # every declared param
     "dim_values": ("D",),                  # dims an expression reads as values
     "states": (("h", ("D",), 0.0), ...),   # name, dims, declared start
     "outputs": (("y", ("D",)), ...)}

Call convention (batch-first, time second, like flash-linear-attention):
  input `k[D]`   -> `[B, T, D]` or `[B, T, H, D]`
  param `A[D,N]` -> `[D, N]` or `[H, D, N]` (heads only if the inputs have them)
  state `h[D]`   -> `[B, D]` or `[B, H, D]`
bf16/fp16 inputs are computed in fp32 and outputs returned in the input dtype.
"""

import dataclasses
from typing import Any

import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class RecError(Exception):
    """A call that does not fit the recurrence; the hint says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message + (f"\n    hint: {hint}" if hint else ""))


@dataclasses.dataclass(frozen=True)
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
    # packed sequences (B = 1): sequence i is steps cu_seqlens[i]:cu_seqlens[i+1], its
    # initial and final states are row i of the states' batch axis; None: one sequence
    # per batch row
    cu_seqlens: tuple[int, ...] | None = None

    @property
    def sequences(self) -> int:
        """How many sequences the states hold: the batch, or the packed count."""
        return self.B if self.cu_seqlens is None else len(self.cu_seqlens) - 1

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


def _check_tensor(kind: str, name: str, value: Any, error: type) -> torch.Tensor:
    """Type, dtype and layout; the values are checked once devices agree (`_check_values`)."""
    if not isinstance(value, torch.Tensor):
        raise error(
            f"{kind} '{name}' must be a torch.Tensor, got {type(value).__name__}",
            hint="convert it with torch.as_tensor(...)",
        )
    if value.layout != torch.strided:
        raise error(
            f"{kind} '{name}' is a {str(value.layout).removeprefix('torch.')} tensor; "
            "recc takes dense (strided) tensors",
            hint=f"pass {name}.to_dense()",
        )
    if value.dtype not in _FLOATS:
        raise error(
            f"{kind} '{name}' has dtype {value.dtype}; recc takes float16, bfloat16, "
            "float32 or float64",
            hint=f"cast it, e.g. {name}.float()",
        )
    return value


def _check_values(
    kind: str, name: str, value: torch.Tensor, check_nan: bool, finite: bool, error: type
) -> None:
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
        raise error(
            f"{kind} '{name}' contains NaN",
            hint="recc rejects NaN in inputs, params and initial states (inf is allowed), "
            "or pass check_nan=False to let it propagate",
        )
    if finite and torch.isinf(value).any():
        raise error(
            f"{kind} '{name}' contains inf, and this recurrence is linear in its state",
            hint="from an infinite start a linear state stays infinite or becomes NaN "
            "(0 * inf): start it from a finite value (only MinMax and nonlinear "
            "recurrences may start at +-inf)",
        )


def bind(
    signature: dict,
    tensors: dict[str, Any],
    initial_state: Any = None,
    check_nan: bool = True,
    finite_states: frozenset[str] = frozenset(),
    error: type = RecError,
    cu_seqlens: Any = None,
) -> Bound:
    """Check a call's arguments against the signature and bind dim sizes.

    `check_nan`: reject NaN in inputs, params and initial states (one
    reduction per tensor; on a GPU it waits for the data). With False, NaN
    propagates like any torch op: to the outputs at and after its step.
    `finite_states`: states whose initial value must also be free of +-inf (those
    a linear recurrence reads). `error`: the exception class raised, called as
    `error(message, hint=...)`. `cu_seqlens`: packed sequences (`check_cu_seqlens`);
    the states then have one row per sequence.

    The computation runs in fp64 if any input, param or initial state is
    fp64, else in fp32; outputs come back in the inputs' and params' promoted
    dtype, final states in the compute dtype.
    """
    name = signature["name"]
    inputs = dict(signature["inputs"])
    params = dict(signature["params"])
    state_decls = signature["states"]
    unknown = [n for n in tensors if n not in inputs and n not in params]
    if unknown:
        names = ", ".join(list(inputs) + list(params))
        hint = f"it takes: {names}"
        if unknown[0] in {s[0] for s in state_decls}:
            hint = f"'{unknown[0]}' is a state: pass initial_state={{'{unknown[0]}': ...}}"
        raise error(f"'{name}' has no input or param named '{unknown[0]}'", hint=hint)
    missing = [n for n in [*inputs, *params] if n not in tensors]
    if missing:
        miss = missing[0]
        kind = "input" if miss in inputs else "param"
        dims = inputs[miss] if miss in inputs else params[miss]
        shape = _layout(dims, "B, T" if kind == "input" else "")
        raise error(f"missing {kind} '{miss}'", hint=f"pass {miss}= a tensor of shape {shape}")
    if not inputs:
        raise error(f"'{name}' has no input, so the sequence length is unknown")

    sizes: dict[str, int] = {}
    origin: dict[str, str] = {}

    def bind_dims(kind: str, tensor: str, shape: tuple[int, ...], dims: tuple[str, ...]) -> None:
        for dim, size in zip(dims, shape):
            if dim in sizes and sizes[dim] != size:
                raise error(
                    f"{kind} '{tensor}' has {dim}={size}, but {origin[dim]} has {dim}={sizes[dim]}",
                    hint=f"every tensor with dim {dim} must agree on its size",
                )
            sizes.setdefault(dim, size)
            origin.setdefault(dim, f"{kind} '{tensor}'")

    first, first_dims = next(iter(inputs.items()))
    x0 = _check_tensor("input", first, tensors[first], error)
    heads = x0.dim() == len(first_dims) + 3
    if x0.dim() not in (len(first_dims) + 2, len(first_dims) + 3):
        raise error(
            f"input '{first}' has shape {list(x0.shape)}; expected "
            f"{_layout(first_dims, 'B, T')} or {_layout(first_dims, 'B, T, H')}",
            hint=_TIME_HINT,
        )
    B, T = x0.shape[0], x0.shape[1]
    H = x0.shape[2] if heads else None
    device = x0.device
    lead = "B, T, H" if heads else "B, T"
    n_lead = 3 if heads else 2
    offsets = None if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T, error)
    rows = B if offsets is None else len(offsets) - 1  # the states' batch axis
    rows_name = "B" if offsets is None else "N"
    dtypes = []

    bound_inputs = {}
    for input_name, dims in inputs.items():
        x = _check_tensor("input", input_name, tensors[input_name], error)
        want = (B, T, *((H,) if heads else ()))
        if x.dim() != len(dims) + n_lead or tuple(x.shape[:n_lead]) != want:
            raise error(
                f"input '{input_name}' has shape {list(x.shape)}; "
                f"expected {_layout(dims, lead)} with {lead} = {list(want)} "
                f"(from input '{first}')",
                hint=_TIME_HINT,
            )
        if x.device != device:
            raise error(
                f"input '{input_name}' is on {x.device}, but '{first}' is on {device}",
                hint="move every tensor to one device",
            )
        bind_dims("input", input_name, tuple(x.shape[n_lead:]), dims)
        bound_inputs[input_name] = x
        dtypes.append(x.dtype)

    bound_params = {}
    for param_name, dims in params.items():
        p = _check_tensor("param", param_name, tensors[param_name], error)
        n_head = p.dim() - len(dims)
        ok = n_head == 0 or (heads and n_head == 1 and p.shape[0] == H)
        if not ok:
            expect = _layout(dims, "H" if heads else "")
            if heads:
                expect += f" or {_layout(dims, '')}"
            raise error(
                f"param '{param_name}' has shape {list(p.shape)}; expected {expect}",
                hint="params are time-invariant: no batch or time axes, "
                "optionally a leading heads axis when the inputs have one",
            )
        if p.device != device:
            raise error(
                f"param '{param_name}' is on {p.device}, but input '{first}' is on {device}",
                hint="move every tensor to one device",
            )
        bind_dims("param", param_name, tuple(p.shape[n_head:]), dims)
        bound_params[param_name] = p
        dtypes.append(p.dtype)

    states = initial_states(signature, initial_state, error)
    for state_name, dims, _ in state_decls:
        if state_name in states:
            x = _check_tensor("initial state", state_name, states[state_name], error)
            want_lead = (rows, *((H,) if heads else ()))
            state_lead = f"{rows_name}, H" if heads else rows_name
            if (
                x.dim() != len(dims) + len(want_lead)
                or tuple(x.shape[: len(want_lead)]) != want_lead
            ):
                raise error(
                    f"initial state '{state_name}' has shape {list(x.shape)}; expected "
                    f"{_layout(dims, state_lead)} with "
                    f"{state_lead} = {', '.join(map(str, want_lead))}",
                    hint="a state's initial value has the batch (and heads) axes of the inputs"
                    if offsets is None
                    else "with cu_seqlens a state has one row per sequence: "
                    f"N = len(cu_seqlens) - 1 = {rows}",
                )
            if x.device != device:
                raise error(
                    f"initial state '{state_name}' is on {x.device}, but inputs are on {device}",
                    hint="move every tensor to one device",
                )
            bind_dims("initial state", state_name, tuple(x.shape[len(want_lead) :]), dims)

    for state_name, dims, _ in state_decls:
        for d in dims:
            if d not in sizes:
                raise error(
                    f"cannot tell the size of dim {d} of state '{state_name}' from the inputs",
                    hint=f"pass initial_state={{'{state_name}': ...}} of the full shape",
                )

    # values last: every tensor is on the one device by now (a meta tensor has none)
    for input_name, x in bound_inputs.items():
        _check_values("input", input_name, x, check_nan, False, error)
    for param_name, x in bound_params.items():
        _check_values("param", param_name, x, check_nan, False, error)
    for state_name, x in states.items():
        _check_values("initial state", state_name, x, check_nan, state_name in finite_states, error)

    out_dtype = dtypes[0]
    for d in dtypes[1:]:
        out_dtype = torch.promote_types(out_dtype, d)
    wide = out_dtype == torch.float64 or any(x.dtype == torch.float64 for x in states.values())
    compute = torch.float64 if wide else torch.float32

    init = {}
    for state_name, dims, start in state_decls:
        shape = (rows, *((H,) if heads else ()), *(sizes[d] for d in dims))
        if state_name in states:
            init[state_name] = states[state_name].to(compute)
        else:
            init[state_name] = torch.full(shape, start, dtype=compute, device=device)
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
                for d in signature["dim_values"]
            },
        },
        initial_state=init,
        compute_dtype=compute,
        out_dtype=out_dtype,
        device=device,
        cu_seqlens=offsets,
    )


def check_cu_seqlens(cu_seqlens: Any, B: int, T: int, error: type = RecError) -> tuple[int, ...]:
    """Packed sequences' offsets as a tuple of ints, checked: a 1-D integer tensor (or a
    list of ints) `[0, t_1, ..., T]`, nondecreasing, with inputs of batch 1 (fla's
    convention). Empty sequences are allowed: their final state is their initial one."""
    how = "cu_seqlens = [0, len_1, len_1 + len_2, ..., T], e.g. torch.tensor([0, 5, 12])"
    if isinstance(cu_seqlens, torch.Tensor):
        if cu_seqlens.dtype.is_floating_point or cu_seqlens.dtype.is_complex:
            raise error(
                f"cu_seqlens has dtype {cu_seqlens.dtype}; it holds step offsets",
                hint="pass an integer tensor (torch.int32 or torch.int64)",
            )
        if cu_seqlens.dim() != 1:
            raise error(f"cu_seqlens has shape {list(cu_seqlens.shape)}; it is 1-D", hint=how)
        offsets = [int(v) for v in cu_seqlens.tolist()]
    elif isinstance(cu_seqlens, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in cu_seqlens
    ):
        offsets = list(cu_seqlens)
    else:
        raise error(
            f"cu_seqlens must be an integer tensor or a list of ints, got "
            f"{type(cu_seqlens).__name__}",
            hint=how,
        )
    if B != 1:
        raise error(
            f"cu_seqlens packs sequences along time, so the inputs have batch 1; got B={B}",
            hint="concatenate the sequences along the time axis into [1, total, ...]",
        )
    if len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != T:
        raise error(
            f"cu_seqlens must start at 0 and end at the inputs' length T={T}; got "
            f"{offsets if len(offsets) <= 8 else offsets[:4] + ['...'] + offsets[-2:]}",
            hint=how,
        )
    for i, (a, b) in enumerate(zip(offsets, offsets[1:])):
        if b < a:
            raise error(
                f"cu_seqlens decreases at position {i + 1} ({a} then {b})",
                hint="offsets are cumulative lengths: nondecreasing",
            )
    return tuple(offsets)


def initial_states(signature: dict, initial_state: Any, error: type = RecError) -> dict[str, Any]:
    """`initial_state` as given to a call (None, a tensor, a tuple or a dict) as a dict."""
    if initial_state is None:
        return {}
    name = signature["name"]
    names = [s[0] for s in signature["states"]]
    if isinstance(initial_state, dict):
        unknown = [n for n in initial_state if n not in names]
        if unknown:
            raise error(
                f"initial_state names '{unknown[0]}', which is not a state",
                hint=f"states are: {', '.join(names)}",
            )
        return {k: v for k, v in initial_state.items() if v is not None}
    if isinstance(initial_state, (tuple, list)):
        if len(initial_state) != len(names):
            raise error(
                f"initial_state has {len(initial_state)} tensors; '{name}' has "
                f"{len(names)} states ({', '.join(names)})",
            )
        return {n: v for n, v in zip(names, initial_state) if v is not None}
    if len(names) != 1:
        raise error(
            f"'{name}' has {len(names)} states; pass initial_state as a dict or tuple",
            hint=f"e.g. initial_state={{'{names[0]}': ...}}",
        )
    return {names[0]: initial_state}

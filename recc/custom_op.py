"""Every recc call as one torch custom op: what `torch.compile` and `torch.func.vmap`
see of a `CompiledRecurrence`.

Stage: top level (runs the api's eager call). Eager calls run the chosen backend
directly (`CompiledRecurrence._run`); a call made while torch.compile traces, or
under a functorch transform (vmap, grad), goes through `recc::call` instead:

  the op          the eager call itself, checks included: the NaN check and the
                  finiteness of linear states run on the call's real values, at
                  run time, so they keep their meaning and never break a graph
  its fake        output and final-state shapes from the spec and the inputs'
                  shapes (`recc.signature.bind` on fake tensors, which reads no
                  values): dynamic T and batch trace without recompiling
  its autograd    `recc::call_backward`, an op of its own (so a compiled graph
                  holds it whole): the call recomputed under autograd and its
                  vector-Jacobian product (activation checkpointing: one more
                  forward, nothing kept but the inputs)
  its vmap rule   the vmapped dim folds into the batch (inputs `[V, B, T, ...]`
                  run as `[V*B, T, ...]`, states likewise); a vmapped param has
                  no batch to fold into and runs one call per slice

A `CompiledRecurrence` is found by a key the op carries as a string; the op
holds no reference to it (a weak map), so compiled functions are freed as usual.
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch

_FUNCTIONS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_KEYS = itertools.count()


def register(fn: Any) -> str:
    """A key under which the op finds `fn` (a `CompiledRecurrence`)."""
    key = f"{fn.spec.name}:{next(_KEYS)}"
    _FUNCTIONS[key] = fn
    return key


# torch's test for a tensor wrapped by a functorch transform (vmap, grad); a torch
# without it runs vmap'd calls eagerly, as before this op existed
_WRAPPED = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)


def traced(tensors: list) -> bool:
    """Whether a call is being traced by torch.compile or runs under a functorch
    transform: then it goes through the op."""
    if torch.compiler.is_compiling():
        return True
    return _WRAPPED is not None and any(
        isinstance(t, torch.Tensor) and _WRAPPED(t) for t in tensors
    )


def _function(key: str):
    fn = _FUNCTIONS.get(key)
    if fn is None:  # pragma: no cover - a key outlives its function only in a leak
        raise RuntimeError(f"recc: the compiled recurrence '{key}' no longer exists")
    return fn


def _unalias(results: list[torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """A custom op's results may share memory with no input and no other result (a
    final state is a view of the last output step, and at T = 0 the initial state
    itself): such a result is copied."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t.numel()}
    unaliased = []
    for r in results:
        if r.numel():
            pointer = r.untyped_storage().data_ptr()
            if pointer in seen:
                r = r.clone()
                pointer = r.untyped_storage().data_ptr()
            seen.add(pointer)
        unaliased.append(r)
    return unaliased


def _names(joined: str) -> list[str]:
    """The op's schema takes no list of strings: names travel comma-joined (a spec's
    names are identifiers)."""
    return joined.split(",") if joined else []


@torch.library.custom_op("recc::call", mutates_args=())
def call(
    key: str,
    names: str,
    tensors: list[torch.Tensor],
    state_names: str,
    states: list[torch.Tensor],
    check_nan: bool,
    cu_seqlens: torch.Tensor | None,
) -> list[torch.Tensor]:
    """The outputs, then the final states, of one call of the function `key`; `names`
    and `state_names` name `tensors` and `states`, comma-joined."""
    fn = _function(key)
    outputs, finals = fn._run(
        dict(zip(_names(names), tensors)),
        dict(zip(_names(state_names), states)),
        check_nan,
        cu_seqlens,
    )
    # contiguous, as the fake's are (inductor checks the strides it was promised)
    results = [r.contiguous() for r in (*outputs, *finals)]
    return _unalias(results, [*tensors, *states])


def empty_results(fn, tensors: dict, starts: dict, cu_seqlens) -> list[torch.Tensor]:
    """Uninitialised outputs and final states of a call of `fn`, of the shapes, dtypes
    and device the call's would have: the op's fake implementation, and an eager call
    on meta tensors (shapes checked, no values read)."""
    bound = fn._bind(tensors, starts, False, None, values=False)
    lead = (bound.B, bound.T, *bound.batch_heads)
    rows = bound.B if cu_seqlens is None else len(cu_seqlens) - 1
    first = next(iter((*tensors.values(), *starts.values())))
    out = [
        torch.empty(
            (*lead, *bound.shape_of(o.expr.dims)), dtype=bound.out_dtype, device=first.device
        )
        for o in fn.spec.outputs
    ]
    finals = [
        torch.empty(
            (rows, *bound.batch_heads, *bound.shape_of(s.dims)),
            dtype=bound.compute_dtype,
            device=first.device,
        )
        for s in fn.spec.states
    ]
    return [*out, *finals]


@call.register_fake
def _(key, names, tensors, state_names, states, check_nan, cu_seqlens):
    return empty_results(
        _function(key),
        dict(zip(_names(names), tensors)),
        dict(zip(_names(state_names), states)),
        cu_seqlens,
    )


@torch.library.custom_op("recc::call_backward", mutates_args=())
def call_backward(
    key: str,
    names: str,
    tensors: list[torch.Tensor],
    state_names: str,
    states: list[torch.Tensor],
    wanted: list[bool],
    cu_seqlens: torch.Tensor | None,
    grads: list[torch.Tensor | None],
) -> list[torch.Tensor]:
    """The cotangents of `tensors` and `states` (zeros where none, and where not
    `wanted`) given those of `call`'s results (None: no cotangent): the call
    recomputed under autograd, then its vector-Jacobian product."""
    fn = _function(key)
    inputs = [*tensors, *states]
    leaves = [t.detach().requires_grad_(w) for t, w in zip(inputs, wanted)]
    with _autograd(), torch.enable_grad():
        outputs, finals = fn._run(
            dict(zip(_names(names), leaves[: len(tensors)])),
            dict(zip(_names(state_names), leaves[len(tensors) :])),
            False,
            cu_seqlens,
        )
        pairs = [(r, g) for r, g in zip([*outputs, *finals], grads) if g is not None]
        pairs = [(r, g) for r, g in pairs if r.requires_grad]
        chosen = [t for t in leaves if t.requires_grad]
        found = (
            torch.autograd.grad(
                [r for r, _ in pairs], chosen, [g for _, g in pairs], allow_unused=True
            )
            if pairs and chosen
            else [None] * len(chosen)
        )
    by_leaf = iter(found)
    result = []
    for t, leaf in zip(inputs, leaves):
        g = next(by_leaf) if leaf.requires_grad else None
        result.append(torch.zeros(t.shape, dtype=t.dtype, device=t.device) if g is None else g)
    return _unalias(
        [g.contiguous() for g in result], [*inputs, *(g for g in grads if g is not None)]
    )


def _autograd():
    """Autograd back on inside an op's implementation. The dispatcher runs a custom
    op's implementation below autograd (its keys excluded for the thread), where
    `torch.enable_grad()` alone records nothing; the recompute needs the graph. The
    thread's dispatch keys are reset for the block to what an eager call has: the
    backend selection included, autocast kept as it is."""
    keys = torch._C.DispatchKey
    excluded = torch._C._dispatch_tls_local_exclude_set()
    kept = torch._C.DispatchKeySet(keys.Undefined)  # empty
    for name in dir(keys):
        if name.startswith("Autocast") and excluded.has(getattr(keys, name)):
            kept = kept.add(getattr(keys, name))
    return torch._C._ForceDispatchKeyGuard(torch._C.DispatchKeySet(keys.BackendSelect), kept)


@call_backward.register_fake
def _(key, names, tensors, state_names, states, wanted, cu_seqlens, grads):
    return [torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (*tensors, *states)]


def _setup(ctx, inputs, output) -> None:
    key, names, tensors, state_names, states, check_nan, cu_seqlens = inputs
    ctx.key, ctx.names, ctx.state_names = key, names, state_names
    ctx.n = len(tensors)
    ctx.wanted = [t.requires_grad and t.is_floating_point() for t in (*tensors, *states)]
    ctx.cu_seqlens = cu_seqlens
    ctx.save_for_backward(*tensors, *states)


def _backward(ctx, grads):
    saved = ctx.saved_tensors
    tensors, states = list(saved[: ctx.n]), list(saved[ctx.n :])
    found = call_backward(
        ctx.key, ctx.names, tensors, ctx.state_names, states, ctx.wanted, ctx.cu_seqlens,
        list(grads),
    )  # fmt: skip
    gradients = [g if w else None for g, w in zip(found, ctx.wanted)]
    return None, None, gradients[: ctx.n], None, gradients[ctx.n :], None, None


call.register_autograd(_backward, setup_context=_setup)


@call.register_vmap
def _(info, in_dims, key, names, tensors, state_names, states, check_nan, cu_seqlens):
    """The vmapped dim folded into the batch: inputs and states `[V, B, ...]` run as
    `[V*B, ...]`; a vmapped param (no batch to fold into) runs one call per slice."""
    _, _, tensor_dims, _, state_dims, _, cu_dim = in_dims
    fn = _function(key)
    params = {p.name for p in fn.spec.params}
    size = info.batch_size
    split = _names(names)
    if cu_dim is not None or any(d is not None for n, d in zip(split, tensor_dims) if n in params):
        slices = []
        for v in range(size):
            at = [t if d is None else t.select(d, v) for t, d in zip(tensors, tensor_dims)]
            st = [s if d is None else s.select(d, v) for s, d in zip(states, state_dims)]
            cu = cu_seqlens if cu_dim is None else cu_seqlens.select(cu_dim, v)
            slices.append(call(key, names, at, state_names, st, check_nan, cu))
        return [torch.stack(r) for r in zip(*slices)], [0] * len(slices[0])

    def folded(t: torch.Tensor, d: int | None) -> torch.Tensor:
        t = t.unsqueeze(0).expand(size, *t.shape) if d is None else t.movedim(d, 0)
        return t.reshape(size * t.shape[1], *t.shape[2:])

    flat = [t if n in params else folded(t, d) for t, n, d in zip(tensors, split, tensor_dims)]
    flat_states = [folded(s, d) for s, d in zip(states, state_dims)]
    results = call(key, names, flat, state_names, flat_states, check_nan, cu_seqlens)
    return [r.reshape(size, r.shape[0] // size, *r.shape[1:]) for r in results], [0] * len(results)


__all__ = ["call", "call_backward", "empty_results", "register", "traced"]

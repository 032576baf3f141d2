"""Test-only instrument: count the global-memory traffic of Triton kernels run in the interpreter.

Use::

    with count_traffic() as traffic:
        kernel[grid](x, y, n, BLOCK=128)
    assert traffic.bytes_read == 4 * n

Only meaningful under Triton's CPU interpreter (TRITON_INTERPRET=1 set before the first
``import triton`` of the process); `count_traffic` raises RuntimeError otherwise, because a
compiled kernel would run without passing through the hooks and every count would silently be 0.
This module monkeypatches private methods of ``triton.runtime.interpreter.InterpreterBuilder``
and is tied to the Triton version (written against Triton 3.9); it fails loudly if a hook point
has moved. Only tests and benchmarks import it; nothing in recc's runtime may.

How it hooks the interpreter
----------------------------
Every memory access of an interpreted kernel goes through the single ``InterpreterBuilder``
instance. In Triton 3.9 the entry points are:

* ``create_masked_load(ptrs, mask, other, ...)`` / ``create_masked_store(ptrs, value, mask, ...)``:
  ``ptrs.data`` is a numpy uint64 array of byte addresses (shape (1,) for a scalar pointer),
  ``mask.data`` a numpy bool array of the same shape, ``ptrs.dtype`` the ``tl.pointer_type``.
  The unmasked ``create_load`` / ``create_store``, ``create_atomic_load`` / ``create_atomic_store``,
  ``create_atomic_poll`` and the tensor-descriptor ops (``create_descriptor_load`` / ``_store`` /
  ``_gather`` / ``_scatter``, which materialise a pointer tensor and a bounds mask) all call these
  two through ``self``, so patching them on the class covers all of those, once per access.
* ``create_atomic_rmw`` and ``create_atomic_cas`` call the C++ interpreter directly and are
  patched separately.

The patches are installed on the class when the outermost `count_traffic` is entered and the
originals put back when it exits (also when the body raises). Nested or overlapping
`count_traffic` blocks each see every access made while they are active.

What is counted
---------------
* Only global memory accessed through pointers: masked-off lanes are not traffic (they are not
  counted in any byte figure), and the element size is the size of the pointer's element type
  (``tl.pointer_type(tl.float32)`` -> 4 bytes; ``tl.int1`` pointers are loaded as int8 by Triton,
  1 byte; a pointer to pointers is 8 bytes). Register values, ``other=`` fill values, kernel
  arguments, and the interpreter's own host/device copies of tensor arguments are not traffic.
* ``loads`` / ``stores``: number of load / store operations executed, summed over all programs
  of the grid, counted even when every lane is masked off (the op still executed). A
  tensor-descriptor gather counts one load per gathered row (the interpreter issues one
  descriptor load per row); ``tl.atomic_load`` / ``tl.atomic_store`` count as a load / store.
* ``bytes_read`` / ``bytes_written``: active lanes x element size, every time. Loading the same
  address twice counts twice. A scalar load (``tl.load(ptr)`` on a single pointer) counts one
  element.
* ``unique_bytes_read`` / ``unique_bytes_written``: the number of distinct byte addresses ever
  read / written inside the block, so a re-read costs nothing extra; ``bytes_read -
  unique_bytes_read`` is the re-read volume. Addresses are those of the interpreter's host copies
  of the arguments; for CPU tensors these are the tensors' own storages, so they are stable
  across launches in one block (for device tensors each launch gets fresh host copies, and
  uniqueness only holds within one launch).
* ``dots`` / ``dot_flops``: ``tl.dot`` calls and their multiply-adds counted as 2 M N K
  floating-point operations each (the tensor-core work; elementwise work is not counted).
* ``atomics``: number of atomic read-modify-write / compare-and-swap ops. ``tl.atomic_*`` RMW ops
  count their active lanes as both read and written; ``tl.atomic_cas`` counts every lane as read
  and the lanes whose old value equalled ``cmp`` as written.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Traffic", "count_traffic", "interpreter_active"]

# Compact the pending address chunks into the sorted set once this many byte addresses wait.
_COMPACT_AT = 1 << 22


class _ByteSet:
    """A set of byte addresses, kept as a sorted unique numpy array plus pending chunks."""

    def __init__(self) -> None:
        self._seen = np.empty(0, dtype=np.uint64)
        self._pending: list[np.ndarray] = []
        self._pending_len = 0

    def add(self, addrs: np.ndarray, itemsize: int) -> None:
        if addrs.size == 0:
            return
        addrs = np.unique(addrs.astype(np.uint64, copy=False))
        if itemsize > 1:
            addrs = (addrs[:, None] + np.arange(itemsize, dtype=np.uint64)[None, :]).ravel()
        self._pending.append(addrs)
        self._pending_len += addrs.size
        if self._pending_len >= _COMPACT_AT:
            self._compact()

    def _compact(self) -> None:
        if self._pending:
            self._seen = np.unique(np.concatenate([self._seen, *self._pending]))
            self._pending = []
            self._pending_len = 0

    def __len__(self) -> int:
        self._compact()
        return int(self._seen.size)


@dataclass(eq=False)
class Traffic:
    """Global-memory traffic seen while a `count_traffic` block was active (see module doc)."""

    bytes_read: int = 0
    bytes_written: int = 0
    loads: int = 0
    stores: int = 0
    atomics: int = 0
    dots: int = 0  # tl.dot calls, summed over the grid's programs
    dot_flops: int = 0  # 2 * M * N * K of each (multiply and add), summed
    _read: _ByteSet = field(default_factory=_ByteSet, repr=False, compare=False)
    _written: _ByteSet = field(default_factory=_ByteSet, repr=False, compare=False)

    @property
    def unique_bytes_read(self) -> int:
        """Distinct byte addresses read (a re-read of the same bytes is not counted again)."""
        return len(self._read)

    @property
    def unique_bytes_written(self) -> int:
        """Distinct byte addresses written."""
        return len(self._written)

    def _record_read(self, addrs: np.ndarray, itemsize: int) -> None:
        self.bytes_read += int(addrs.size) * itemsize
        self._read.add(addrs, itemsize)

    def _record_write(self, addrs: np.ndarray, itemsize: int) -> None:
        self.bytes_written += int(addrs.size) * itemsize
        self._written.add(addrs, itemsize)

    def summary(self) -> str:
        return (
            f"read {self.bytes_read} B ({self.unique_bytes_read} B unique) in {self.loads} loads, "
            f"wrote {self.bytes_written} B ({self.unique_bytes_written} B unique) in "
            f"{self.stores} stores, {self.atomics} atomics"
        )


def interpreter_active() -> bool:
    """True when Triton was imported in interpreter mode, so @triton.jit kernels run in Python.

    Triton decorates its own library (``tl.cdiv``...) when ``triton.language`` is first imported;
    in interpreter mode those are not `JITFunction`s.
    """
    if "triton" not in sys.modules:
        return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    import triton.language.standard as standard
    from triton.runtime.jit import JITFunction

    return not isinstance(standard.cdiv, JITFunction)


_active: list[Traffic] = []
_originals: dict[str, object] = {}
_HOOKED = (
    "create_masked_load",
    "create_masked_store",
    "create_atomic_rmw",
    "create_atomic_cas",
    "create_dot",
)


def _itemsize(ptr_handle) -> int:
    """Bytes per element behind a pointer TensorHandle (its dtype is the scalar pointer type)."""
    ptr_ty = ptr_handle.dtype
    ptr_ty = getattr(ptr_ty, "scalar", ptr_ty)  # a block type would carry the pointer as .scalar
    pointee = getattr(ptr_ty, "element_ty", None)
    if pointee is None:
        raise TypeError(f"triton_traffic: expected a pointer handle, got dtype {ptr_handle.dtype}")
    if pointee.is_ptr():
        return 8
    return max(1, pointee.primitive_bitwidth // 8)


def _active_addrs(ptrs, mask) -> np.ndarray:
    addrs = np.asarray(ptrs.data)
    if mask is None:
        return addrs.ravel()
    m = np.broadcast_to(np.asarray(mask.data, dtype=bool), addrs.shape)
    return addrs[m]


def _install() -> None:
    from triton.runtime import interpreter

    builder_cls = getattr(interpreter, "InterpreterBuilder", None)
    missing = [n for n in _HOOKED if not callable(getattr(builder_cls, n, None))]
    if builder_cls is None or missing:
        import triton

        raise RuntimeError(
            f"triton {triton.__version__}: triton.runtime.interpreter.InterpreterBuilder or its "
            f"methods {missing} are gone; recc/testing/triton_traffic.py must be updated"
        )
    orig = {n: getattr(builder_cls, n) for n in _HOOKED}

    def create_masked_load(self, ptrs, mask, other, cache_policy, is_volatile):
        ret = orig["create_masked_load"](self, ptrs, mask, other, cache_policy, is_volatile)
        addrs, size = _active_addrs(ptrs, mask), _itemsize(ptrs)
        for t in _active:
            t.loads += 1
            t._record_read(addrs, size)
        return ret

    def create_masked_store(self, ptrs, value, mask, cache_policy):
        ret = orig["create_masked_store"](self, ptrs, value, mask, cache_policy)
        addrs, size = _active_addrs(ptrs, mask), _itemsize(ptrs)
        for t in _active:
            t.stores += 1
            t._record_write(addrs, size)
        return ret

    def create_atomic_rmw(self, rmwOp, ptr, val, mask, sem, scope):
        ret = orig["create_atomic_rmw"](self, rmwOp, ptr, val, mask, sem, scope)
        addrs, size = _active_addrs(ptr, mask), _itemsize(ptr)
        for t in _active:
            t.atomics += 1
            t._record_read(addrs, size)
            t._record_write(addrs, size)
        return ret

    def create_atomic_cas(self, ptr, cmp, val, sem, scope):
        ret = orig["create_atomic_cas"](self, ptr, cmp, val, sem, scope)
        addrs, size = _active_addrs(ptr, None), _itemsize(ptr)
        old = np.asarray(ret.data)
        swapped = np.broadcast_to(old == np.asarray(cmp.data), np.asarray(ptr.data).shape)
        written = np.asarray(ptr.data)[swapped]
        for t in _active:
            t.atomics += 1
            t._record_read(addrs, size)
            t._record_write(written, size)
        return ret

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        ret = orig["create_dot"](self, a, b, d, input_precision, max_num_imprecise_acc)
        shape_a, shape_b = np.asarray(a.data).shape, np.asarray(b.data).shape
        flops = 2 * int(np.prod(shape_a)) * shape_b[-1]  # [.., M, K] @ [.., K, N]
        for t in _active:
            t.dots += 1
            t.dot_flops += flops
        return ret

    hooks = {
        "create_dot": create_dot,
        "create_masked_load": create_masked_load,
        "create_masked_store": create_masked_store,
        "create_atomic_rmw": create_atomic_rmw,
        "create_atomic_cas": create_atomic_cas,
    }
    for name, hook in hooks.items():
        hook.__wrapped__ = orig[name]
        setattr(builder_cls, name, hook)
    _originals.clear()
    _originals.update(orig)
    _originals["__class__"] = builder_cls


def _uninstall() -> None:
    builder_cls = _originals.pop("__class__")
    for name in _HOOKED:
        setattr(builder_cls, name, _originals.pop(name))


@contextlib.contextmanager
def count_traffic() -> Iterator[Traffic]:
    """Count the global-memory traffic of every interpreted Triton kernel run inside the block.

    Yields a `Traffic` whose counters grow while the block runs; read them after it (or
    during). The interpreter's hooks are removed when the outermost block exits, even on error.
    """
    if not interpreter_active():
        raise RuntimeError(
            "count_traffic needs Triton's interpreter: set TRITON_INTERPRET=1 before the first "
            "`import triton` of the process"
        )
    traffic = Traffic()
    if not _active:
        _install()
    _active.append(traffic)
    try:
        yield traffic
    finally:
        _active.remove(traffic)
        if not _active:
            _uninstall()

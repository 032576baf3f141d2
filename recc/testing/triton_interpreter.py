"""Test-only helpers for running Triton kernels under the CPU interpreter (TRITON_INTERPRET=1).

Fast scan
---------
Under the interpreter, ``tl.associative_scan`` with a user combine function is executed by
``triton.runtime.interpreter.ScanOps.generic_scan``, which walks the tile one element at a time
and calls the combine function on 0-d tensors: one Python-level combine (about 100 us) per
element of the tile, so a single [64, 32] scan costs ~0.2 s. Recurrence kernels are made of such
scans, which makes interpreter tests slow.

`install_fast_scan` replaces ``generic_scan`` with a Hillis-Steele log-step scan: ceil(log2 n)
rounds, each calling the combine function once on whole shifted numpy arrays. The result is
the same identity-free inclusive scan: element i becomes ``x_0 (+) x_1 (+) ... (+) x_i``, with
the combine always called as ``combine(earlier, later)``, so non-commutative (but associative)
combine functions are honoured. Only the bracketing differs (a tree instead of a left fold,
which is also what the GPU does), so floating-point results can differ from the element-wise
fold by rounding. ``reverse=True`` is untouched: the interpreter flips the inputs along the
axis, calls ``generic_scan``, and flips back, and that wrapper is kept. The cumsum/cumprod
fast paths of the interpreter are not affected.

This is a test accelerator only: it monkeypatches a private class of Triton's interpreter (so
it is tied to the Triton version; `install_fast_scan` fails loudly if the hook point moved) and
only tests and benchmarks import it; nothing in recc's runtime may.

Interpreter mode is fixed at the first ``import triton``
----------------------------------------------------------
``@triton.jit`` picks ``InterpretedFunction`` or ``JITFunction`` from TRITON_INTERPRET when it
decorates, and Triton's own library (``tl.cdiv``, ``tl.sum``, ...) is decorated when
``triton.language`` is first imported. Interpreted kernels calling those library functions only
run if the library was decorated in interpreter mode too, so TRITON_INTERPRET=1 must be set
before anything in the process imports triton. `interpreter_active` tells whether that happened.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

__all__ = [
    "fast_scan",
    "fast_scan_installed",
    "install_fast_scan",
    "interpreter_active",
    "uninstall_fast_scan",
]

_original_generic_scan = None


def _scan_ops():
    from triton.runtime import interpreter

    scan_ops = getattr(interpreter, "ScanOps", None)
    if scan_ops is None or not callable(getattr(scan_ops, "generic_scan", None)):
        import triton

        raise RuntimeError(
            f"triton {triton.__version__}: triton.runtime.interpreter.ScanOps.generic_scan not "
            "found; the fast scan hook needs updating for this Triton version"
        )
    return scan_ops


def _fast_generic_scan(self, input):
    """Drop-in for ``ScanOps.generic_scan``: inclusive scan of a tuple of tensors along
    ``self.axis`` in ceil(log2 n) vectorised combine calls."""
    import triton.language as tl

    arrays = [np.array(arg.handle.data, copy=True) for arg in input]
    dtypes = [arg.dtype for arg in input]
    shape = arrays[0].shape
    axis = self.axis if self.axis >= 0 else self.axis + len(shape)
    n = shape[axis]

    def along(start: int, stop: int) -> tuple[slice, ...]:
        index = [slice(None)] * len(shape)
        index[axis] = slice(start, stop)
        return tuple(index)

    step = 1
    while step < n:
        head, tail = along(0, step), along(step, None)
        # Hillis-Steele round: y[i] = y[i - step] (+) y[i] for i >= step, from the old y. Triton
        # tensors must keep power-of-two shapes, so the combine runs on full-length operands: the
        # earlier operand is y shifted by `step` (its first `step` entries are filler) and the
        # first `step` results are discarded.
        shifted = [np.concatenate([a[head], a[along(0, n - step)]], axis=axis) for a in arrays]
        left = [self.to_tensor(a, dt) for a, dt in zip(shifted, dtypes)]
        right = [self.to_tensor(a, dt) for a, dt in zip(arrays, dtypes)]
        result = self.combine_fn.fn(*left, *right)
        result = result if isinstance(result, tuple) else (result,)
        if len(result) != len(arrays):
            raise ValueError(
                f"scan combine function returned {len(result)} values for {len(arrays)} operands"
            )
        updated = []
        for a, value in zip(arrays, result):
            data = value.handle.data if isinstance(value, tl.core.tensor) else value
            data = np.broadcast_to(np.asarray(data), shape)
            out = a.copy()
            out[tail] = data[tail].astype(a.dtype, copy=False)
            updated.append(out)
        arrays = updated
        step *= 2
    return [self.to_tensor(a, dt) for a, dt in zip(arrays, dtypes)]


def install_fast_scan() -> None:
    """Patch the interpreter's generic scan with the vectorised one (idempotent)."""
    global _original_generic_scan
    scan_ops = _scan_ops()
    if _original_generic_scan is None:
        _original_generic_scan = scan_ops.generic_scan
    scan_ops.generic_scan = _fast_generic_scan


def uninstall_fast_scan() -> None:
    """Restore the interpreter's element-by-element generic scan (idempotent)."""
    global _original_generic_scan
    if _original_generic_scan is not None:
        _scan_ops().generic_scan = _original_generic_scan
        _original_generic_scan = None


def fast_scan_installed() -> bool:
    return _scan_ops().generic_scan is _fast_generic_scan


@contextlib.contextmanager
def fast_scan(enabled: bool = True) -> Iterator[None]:
    """Run the body with the fast scan installed (``enabled=False``: with the original one)."""
    scan_ops = _scan_ops()
    previous = scan_ops.generic_scan
    if enabled:
        install_fast_scan()
    else:
        uninstall_fast_scan()
    try:
        yield
    finally:
        if previous is _fast_generic_scan:
            install_fast_scan()
        else:
            uninstall_fast_scan()


def interpreter_active() -> bool:
    """True when triton.language was imported with TRITON_INTERPRET=1, so kernels decorated in
    interpreter mode can run (on CPU tensors)."""
    import triton.language.standard as standard
    from triton.runtime.jit import JITFunction

    return not isinstance(standard.cdiv, JITFunction)

"""Small hand-written Triton scan kernels used by tests/test_triton_support.py.

Triton reads kernel source from a file, so the kernels live here rather than inside the test.
Each kernel runs a first-order recurrence over time for D independent channels: a program owns
BLOCK_D channels and walks time in tiles of BLOCK_T steps; inside a tile the recurrence is a
``tl.associative_scan`` over the time axis (axis 0 of a [BLOCK_T, BLOCK_D] tile), and the state
carried between tiles is applied to the scanned tile. Padded (masked) steps hold the identity
element of the combine, so the state after a padded step is unchanged. All tensors are
contiguous float32; ``H0`` is the state before the first step (after the last one for the
reverse direction).
"""

import triton
import triton.language as tl


@triton.jit
def affine_combine(a1, b1, a2, b2):
    # Step maps h -> a*h + b, earlier step (a1, b1) first: h -> a2*(a1*h + b1) + b2.
    # Associative, not commutative.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def clamp_combine(a1, b1, a2, b2):
    # Step maps h -> max(min(a, h), b); composing earlier (a1, b1) then (a2, b2) gives
    # h -> max(min(min(a1, a2), h), max(min(a2, b1), b2)). Associative, not commutative.
    return tl.minimum(a1, a2), tl.maximum(tl.minimum(a2, b1), b2)


@triton.jit
def matrix_combine(p00, p01, p10, p11, p0, p1, q00, q01, q10, q11, q0, q1):
    # Step maps h -> M h + v for 2x2 M and 2-vector v; earlier (P, p) then (Q, q) gives
    # h -> (Q P) h + (Q p + q).
    return (
        q00 * p00 + q01 * p10,
        q00 * p01 + q01 * p11,
        q10 * p00 + q11 * p10,
        q10 * p01 + q11 * p11,
        q00 * p0 + q01 * p1 + q0,
        q10 * p0 + q11 * p1 + q1,
    )


@triton.jit
def _tile_start(i, n_tiles, BLOCK_T: tl.constexpr, REVERSE: tl.constexpr):
    if REVERSE:
        t0 = (n_tiles - 1 - i) * BLOCK_T
    else:
        t0 = i * BLOCK_T
    return t0


@triton.jit
def _carry_row(x, rows, BLOCK_T: tl.constexpr, REVERSE: tl.constexpr):
    # The state handed to the next tile: the last row of a forward scan, the first of a reverse
    # one. Selecting with where + sum is exact (every other term is 0).
    if REVERSE:
        pick = rows[:, None] == 0
    else:
        pick = rows[:, None] == BLOCK_T - 1
    return tl.sum(tl.where(pick, x, 0.0), axis=0)


@triton.jit
def affine_scan_kernel(
    A, B, H0, H, T, D, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr
):
    """H[t] = A[t] * H[t-1] + B[t] (forward) or A[t] * H[t+1] + B[t] (REVERSE); [T, D]."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_T)
    h = tl.load(H0 + cols, mask=cols < D, other=0.0)
    n_tiles = tl.cdiv(T, BLOCK_T)
    for i in range(0, n_tiles):
        t = _tile_start(i, n_tiles, BLOCK_T, REVERSE) + rows
        offs = t[:, None] * D + cols[None, :]
        mask = (t[:, None] < T) & (cols[None, :] < D)
        a = tl.load(A + offs, mask=mask, other=1.0)
        b = tl.load(B + offs, mask=mask, other=0.0)
        a_cum, b_cum = tl.associative_scan((a, b), 0, affine_combine, reverse=REVERSE)
        out = a_cum * h[None, :] + b_cum
        tl.store(H + offs, out, mask=mask)
        h = _carry_row(out, rows, BLOCK_T, REVERSE)


@triton.jit
def clamp_scan_kernel(
    A, B, H0, H, T, D, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr
):
    """H[t] = max(min(A[t], H[t-1]), B[t]) (or from H[t+1] when REVERSE); [T, D]."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_T)
    h = tl.load(H0 + cols, mask=cols < D, other=0.0)
    n_tiles = tl.cdiv(T, BLOCK_T)
    for i in range(0, n_tiles):
        t = _tile_start(i, n_tiles, BLOCK_T, REVERSE) + rows
        offs = t[:, None] * D + cols[None, :]
        mask = (t[:, None] < T) & (cols[None, :] < D)
        a = tl.load(A + offs, mask=mask, other=float("inf"))
        b = tl.load(B + offs, mask=mask, other=float("-inf"))
        a_cum, b_cum = tl.associative_scan((a, b), 0, clamp_combine, reverse=REVERSE)
        out = tl.maximum(tl.minimum(a_cum, h[None, :]), b_cum)
        tl.store(H + offs, out, mask=mask)
        h = _carry_row(out, rows, BLOCK_T, REVERSE)


@triton.jit
def matrix_scan_kernel(M, V, H0, H, T, D, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    """H[t] = M[t] @ H[t-1] + V[t]; M is [T, D, 2, 2], V and H are [T, D, 2], H0 is [D, 2]."""
    cols = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    rows = tl.arange(0, BLOCK_T)
    h0 = tl.load(H0 + cols * 2, mask=cols < D, other=0.0)
    h1 = tl.load(H0 + cols * 2 + 1, mask=cols < D, other=0.0)
    for t0 in range(0, T, BLOCK_T):
        t = t0 + rows
        cell = t[:, None] * D + cols[None, :]
        mask = (t[:, None] < T) & (cols[None, :] < D)
        m00 = tl.load(M + cell * 4, mask=mask, other=1.0)
        m01 = tl.load(M + cell * 4 + 1, mask=mask, other=0.0)
        m10 = tl.load(M + cell * 4 + 2, mask=mask, other=0.0)
        m11 = tl.load(M + cell * 4 + 3, mask=mask, other=1.0)
        v0 = tl.load(V + cell * 2, mask=mask, other=0.0)
        v1 = tl.load(V + cell * 2 + 1, mask=mask, other=0.0)
        m00, m01, m10, m11, v0, v1 = tl.associative_scan(
            (m00, m01, m10, m11, v0, v1), 0, matrix_combine
        )
        out0 = m00 * h0[None, :] + m01 * h1[None, :] + v0
        out1 = m10 * h0[None, :] + m11 * h1[None, :] + v1
        tl.store(H + cell * 2, out0, mask=mask)
        tl.store(H + cell * 2 + 1, out1, mask=mask)
        h0 = _carry_row(out0, rows, BLOCK_T, False)
        h1 = _carry_row(out1, rows, BLOCK_T, False)


@triton.jit
def pick_first_combine(a, b):
    # Associative, not commutative: an inclusive scan gives x_0 everywhere (x_last if reversed).
    return a


@triton.jit
def running_argmax_combine(v1, i1, v2, i2):
    # Running maximum with its index; ties keep the earlier element (not commutative).
    later = v2 > v1
    return tl.where(later, v2, v1), tl.where(later, i2, i1)


@triton.jit
def _tile_offsets(M: tl.constexpr, N: tl.constexpr):
    return tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :]


@triton.jit
def tile_affine_scan_kernel(
    A, B, OA, OB, M: tl.constexpr, N: tl.constexpr, AXIS: tl.constexpr, REVERSE: tl.constexpr
):
    """One [M, N] tile: (OA, OB) = associative_scan((A, B), AXIS, affine_combine, REVERSE)."""
    offs = _tile_offsets(M, N)
    a, b = tl.associative_scan(
        (tl.load(A + offs), tl.load(B + offs)), AXIS, affine_combine, reverse=REVERSE
    )
    tl.store(OA + offs, a)
    tl.store(OB + offs, b)


@triton.jit
def tile_argmax_scan_kernel(
    X, OV, OI, M: tl.constexpr, N: tl.constexpr, AXIS: tl.constexpr, REVERSE: tl.constexpr
):
    """One [M, N] tile: running (max, int32 index of the max) along AXIS."""
    offs = _tile_offsets(M, N)
    if AXIS == 0:
        index = tl.broadcast_to(tl.arange(0, M)[:, None], (M, N))
    else:
        index = tl.broadcast_to(tl.arange(0, N)[None, :], (M, N))
    v, i = tl.associative_scan(
        (tl.load(X + offs), index), AXIS, running_argmax_combine, reverse=REVERSE
    )
    tl.store(OV + offs, v)
    tl.store(OI + offs, i)


@triton.jit
def tile_first_scan_kernel(
    X, OX, M: tl.constexpr, N: tl.constexpr, AXIS: tl.constexpr, REVERSE: tl.constexpr
):
    """One [M, N] tile, a single (non-tuple) operand: scan with pick_first_combine."""
    offs = _tile_offsets(M, N)
    tl.store(OX + offs, tl.associative_scan(tl.load(X + offs), AXIS, pick_first_combine, REVERSE))


def _plain_python_double(x):
    return x * 2.0


@triton.jit
def early_exit_kernel(X, Y, N: tl.constexpr):
    """Deliberately invalid for the compiler (no `break` in Triton), while the interpreter,
    which executes the Python body, runs it: Y = 4 * X."""
    offs = tl.arange(0, N)
    acc = tl.load(X + offs)
    for i in range(4):
        if i == 2:
            break
        acc = acc * 2.0
    tl.store(Y + offs, acc)


@triton.jit
def python_call_kernel(X, Y, N: tl.constexpr):
    """Deliberately invalid for the compiler (calls a function that is not @triton.jit), while
    the interpreter runs it: Y = 2 * X."""
    offs = tl.arange(0, N)
    tl.store(Y + offs, _plain_python_double(tl.load(X + offs)))

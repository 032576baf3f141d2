"""Tiny Triton kernels for tests/test_triton_traffic.py (Triton reads kernel source from a file).

The pointer kernels take contiguous 1-D tensors of ``n`` elements; a program handles BLOCK
elements, and the last program's tail lanes (``offs >= n``) are masked off.
"""

import triton
import triton.language as tl


@triton.jit
def copy_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=mask), mask=mask)


@triton.jit
def double_read_kernel(X, Y, n, BLOCK: tl.constexpr):
    # Reads every element of X twice (two separate loads), writes Y once.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(X + offs, mask=mask, other=0.0)
    b = tl.load(X + offs, mask=mask, other=0.0)
    tl.store(Y + offs, a + b, mask=mask)


@triton.jit
def scale_kernel(X, S, Y, n, BLOCK: tl.constexpr):
    # Every program loads the scalar S[0] (one element), then scales its block of X into Y.
    s = tl.load(S)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=mask) * s, mask=mask)


@triton.jit
def atomic_add_kernel(X, Y, n, BLOCK: tl.constexpr):
    # Y[i] += X[i] with an atomic read-modify-write per active lane.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.atomic_add(Y + offs, tl.load(X + offs, mask=mask), mask=mask)


@triton.jit
def descriptor_copy_kernel(x_desc, y_desc, BM: tl.constexpr, BN: tl.constexpr):
    # Copies one [BM, BN] tile per program through tensor descriptors; rows/columns past the
    # tensor's shape are out of bounds (zero-padded on load, dropped on store).
    m = tl.program_id(0) * BM
    n = tl.program_id(1) * BN
    y_desc.store([m, n], x_desc.load([m, n]))


@triton.jit
def matmul_kernel(A, B, C, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
    # C = A @ B in one program, [M, K] @ [K, N], by two dots over halves of K.
    m, n, k = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K // 2)
    acc = tl.zeros([M, N], tl.float32)
    for half in tl.static_range(2):
        a = tl.load(A + m[:, None] * K + half * (K // 2) + k[None, :])
        b = tl.load(B + (half * (K // 2) + k[:, None]) * N + n[None, :])
        acc += tl.dot(a, b, input_precision="ieee")
    tl.store(C + m[:, None] * N + n[None, :], acc)

"""recc.testing.triton_traffic: exact global-memory byte counts of tiny interpreted Triton kernels.

The kernels live in tests/helpers/triton_traffic_kernels.py. The 1-D launches use n = 100
elements in blocks of 32, so 4 programs run and the last one has 28 masked-off lanes, which must
not count; the tensor-descriptor launch has partial tiles, whose out-of-bounds elements must not
count.

TRITON_INTERPRET=1 must be set before the first ``import triton`` of the process (tests/conftest.py
does that); if Triton was imported earlier without it, these tests are skipped.
"""

from __future__ import annotations

import os
import sys

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import recc.testing.triton_traffic as triton_traffic  # noqa: E402
from recc.testing.triton_traffic import count_traffic  # noqa: E402
from tests.helpers import triton_traffic_kernels as k  # noqa: E402

pytestmark = pytest.mark.skipif(
    not triton_traffic.interpreter_active(),
    reason="Triton is not in interpreter mode (it was imported before TRITON_INTERPRET=1 was "
    "set, or it is set to 0); set it for the whole test process (tests/conftest.py does) to "
    "count interpreter traffic",
)

N, BLOCK = 100, 32
PROGRAMS = -(-N // BLOCK)  # 4, the last one partly masked


def _grid(n: int = N) -> tuple[int]:
    return (max(1, -(-n // BLOCK)),)


def _builder_methods() -> dict[str, object]:
    from triton.runtime.interpreter import InterpreterBuilder

    return {name: getattr(InterpreterBuilder, name) for name in triton_traffic._HOOKED}


@pytest.mark.parametrize(
    "dtype, size",
    [(torch.float32, 4), (torch.float16, 2), (torch.int64, 8), (torch.bool, 1)],
)
def test_masked_copy_counts_only_active_lanes(dtype, size):
    x = (torch.arange(N) % 3).to(dtype)
    y = torch.zeros(N, dtype=dtype)
    with count_traffic() as t:
        k.copy_kernel[_grid()](x, y, N, BLOCK=BLOCK)
    assert torch.equal(x, y)
    assert (t.loads, t.stores, t.atomics) == (PROGRAMS, PROGRAMS, 0)
    assert t.bytes_read == t.unique_bytes_read == size * N
    assert t.bytes_written == t.unique_bytes_written == size * N


def test_double_read_counts_twice_but_unique_once():
    x = torch.randn(N)
    y = torch.empty(N)
    with count_traffic() as t:
        k.double_read_kernel[_grid()](x, y, N, BLOCK=BLOCK)
    torch.testing.assert_close(y, 2 * x)
    assert t.loads == 2 * PROGRAMS
    assert t.bytes_read == 8 * N
    assert t.unique_bytes_read == 4 * N
    assert t.bytes_written == t.unique_bytes_written == 4 * N


def test_scalar_load_counts_one_element_per_program():
    x = torch.randn(N)
    s = torch.tensor([3.0])
    y = torch.empty(N)
    with count_traffic() as t:
        k.scale_kernel[_grid()](x, s, y, N, BLOCK=BLOCK)
    torch.testing.assert_close(y, 3 * x)
    assert t.loads == 2 * PROGRAMS
    assert t.bytes_read == 4 * N + 4 * PROGRAMS  # every program reads S[0]
    assert t.unique_bytes_read == 4 * N + 4
    assert t.bytes_written == 4 * N


def test_fully_masked_op_counts_as_op_but_moves_no_bytes():
    x = torch.randn(4)
    y = torch.zeros(4)
    with count_traffic() as t:
        k.copy_kernel[_grid(0)](x, y, 0, BLOCK=BLOCK)
    assert (t.loads, t.stores) == (1, 1)
    assert (t.bytes_read, t.bytes_written, t.unique_bytes_read, t.unique_bytes_written) == (0,) * 4


def test_atomic_add_reads_and_writes_its_target():
    x = torch.randn(N)
    y = torch.ones(N)
    with count_traffic() as t:
        k.atomic_add_kernel[_grid()](x, y, N, BLOCK=BLOCK)
    torch.testing.assert_close(y, x + 1)
    assert (t.loads, t.stores, t.atomics) == (PROGRAMS, 0, PROGRAMS)
    assert t.bytes_read == t.unique_bytes_read == 4 * N + 4 * N  # X, then Y read by the RMW
    assert t.bytes_written == t.unique_bytes_written == 4 * N


def test_descriptor_copy_counts_in_bounds_elements():
    from triton.tools.tensor_descriptor import TensorDescriptor

    rows, cols, bm, bn = 10, 24, 8, 16  # 2 x 2 tiles, the last row and column of tiles partial
    x = torch.randn(rows, cols)
    y = torch.zeros(rows, cols)
    xd = TensorDescriptor.from_tensor(x, [bm, bn])
    yd = TensorDescriptor.from_tensor(y, [bm, bn])
    with count_traffic() as t:
        k.descriptor_copy_kernel[(2, 2)](xd, yd, BM=bm, BN=bn)
    assert torch.equal(x, y)
    assert (t.loads, t.stores) == (4, 4)
    assert t.bytes_read == t.unique_bytes_read == 4 * rows * cols
    assert t.bytes_written == t.unique_bytes_written == 4 * rows * cols


def test_two_launches_accumulate_and_nested_blocks_see_their_own_span():
    x = torch.randn(N)
    y = torch.empty(N)
    with count_traffic() as outer:
        k.copy_kernel[_grid()](x, y, N, BLOCK=BLOCK)
        with count_traffic() as inner:
            k.copy_kernel[_grid()](x, y, N, BLOCK=BLOCK)
    assert (inner.bytes_read, inner.unique_bytes_read) == (4 * N, 4 * N)
    assert (outer.bytes_read, outer.unique_bytes_read) == (8 * N, 4 * N)
    assert (outer.bytes_written, outer.unique_bytes_written) == (8 * N, 4 * N)
    assert outer.loads == 2 * inner.loads == 2 * PROGRAMS
    # Launches after the block are not counted.
    k.copy_kernel[_grid()](x, y, N, BLOCK=BLOCK)
    assert outer.bytes_read == 8 * N


def test_hooks_are_removed_on_exit_and_on_error():
    before = _builder_methods()
    with count_traffic():
        assert _builder_methods() != before
    assert _builder_methods() == before
    with pytest.raises(ZeroDivisionError), count_traffic():
        assert _builder_methods() != before
        _ = 1 / 0
    assert _builder_methods() == before
    assert not triton_traffic._active


def test_dots_count_their_multiply_adds():
    M, N, K = 16, 32, 64
    a, b = torch.randn(M, K), torch.randn(K, N)
    c = torch.empty(M, N)
    with count_traffic() as traffic:
        k.matmul_kernel[(3,)](a, b, c, M=M, N=N, K=K)
    torch.testing.assert_close(c, a @ b)
    assert traffic.dots == 2 * 3  # two per program
    assert traffic.dot_flops == 3 * 2 * M * N * K

"""Shared test setup.

Before anything imports Triton: this machine has no GPU, so Triton kernels
run in its CPU interpreter (TRITON_INTERPRET=1 must be set before the first
`import triton`), and kernel caches (Triton's and recc's) go to a fresh
temporary folder so runs never share stale kernels (inductor's too, for
`torch_compile=True`). Every test starts from
the same random seed, and runs Triton's interpreter with the vectorised scan.
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
_CACHE = tempfile.mkdtemp(prefix="recc-test-cache-")
os.environ.setdefault("TRITON_CACHE_DIR", os.path.join(_CACHE, "triton"))
os.environ.setdefault("RECC_CACHE_DIR", os.path.join(_CACHE, "recc"))
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(_CACHE, "inductor"))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fast_triton_scan():
    """Triton's interpreter runs tl.associative_scan element by element; every test runs
    with the vectorised equivalent of recc.testing.triton_interpreter (tests that compare
    the two switch it off themselves)."""
    from recc.testing.triton_interpreter import fast_scan

    with fast_scan():
        yield

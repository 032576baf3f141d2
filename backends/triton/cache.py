"""On-disk cache of generated kernel modules.

Stage: backend (triton), runtime side. Triton needs a kernel's source in a
real file, so each generated module is written once to

    $RECC_CACHE_DIR (default ~/.cache/recc) / kernels / <stem>_<hash>.py

where the hash covers recc's version and the full source (which embeds the
spec and every option that shaped it). Writes go to a uniquely named
temporary file first and are moved into place with os.replace, so concurrent
processes never see half a file. Any entry that cannot be read back (not the
bytes expected, not UTF-8, a corrupt `.pyc` beside it) is a miss: it is
removed and written again. Imported modules are kept per process.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import recc
from recc.errors import RecError

_LOADED: dict[str, ModuleType] = {}


def cache_dir() -> Path:
    root = os.environ.get("RECC_CACHE_DIR") or Path.home() / ".cache" / "recc"
    return Path(root) / "kernels"


def module_key(source: str) -> str:
    return hashlib.sha256(f"recc {recc.__version__}\n{source}".encode()).hexdigest()[:20]


def _holds(path: Path, data: bytes) -> bool:
    try:
        return path.read_bytes() == data
    except OSError:
        return False


def write_module(source: str, stem: str) -> Path:
    directory = cache_dir()
    path = directory / f"{stem[:80]}_{module_key(source)}.py"
    data = source.encode("utf-8")
    if _holds(path, data):
        return path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.stem}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise RecError(
            f"cannot write the kernel cache at {directory}: {err.strerror or err}",
            hint="set RECC_CACHE_DIR to a folder you can write to",
        ) from None
    return path


def _discard(path: Path) -> None:
    """Remove a cache entry and its compiled bytecode."""
    for stale in (path, Path(importlib.util.cache_from_source(str(path)))):
        with contextlib.suppress(OSError):
            stale.unlink()


def _import(path: Path) -> ModuleType:
    name = f"recc_generated_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_module(source: str, stem: str) -> ModuleType:
    """The module for `source`, written to the cache if needed and imported once."""
    key = module_key(source)
    if key in _LOADED:
        return _LOADED[key]
    path = write_module(source, stem)
    try:
        module = _import(path)
    except Exception:  # noqa: BLE001 - an unreadable entry (e.g. a corrupt .pyc) is a miss
        _discard(path)
        module = _import(write_module(source, stem))
    _LOADED[key] = module
    return module

"""On-disk cache of generated kernel modules.

Stage: backend (triton), runtime side. Triton needs a kernel's source in a
real file, so each generated module is written once to

    $RECC_CACHE_DIR (default ~/.cache/recc) / kernels / <stem>_<hash>.py

where the hash covers recc's version and the full source (which embeds the
spec and every option that shaped it). Writes go to a temporary file first
and are moved into place with os.replace, so concurrent processes never see
half a file. Imported modules are kept per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import recc

_LOADED: dict[str, ModuleType] = {}


def cache_dir() -> Path:
    root = os.environ.get("RECC_CACHE_DIR") or Path.home() / ".cache" / "recc"
    return Path(root) / "kernels"


def module_key(source: str) -> str:
    return hashlib.sha256(f"recc {recc.__version__}\n{source}".encode()).hexdigest()[:20]


def write_module(source: str, stem: str) -> Path:
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}_{module_key(source)}.py"
    if not path.exists() or path.read_text() != source:
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    return path


def load_module(source: str, stem: str) -> ModuleType:
    """The module for `source`, written to the cache if needed and imported once."""
    key = module_key(source)
    if key in _LOADED:
        return _LOADED[key]
    path = write_module(source, stem)
    name = f"recc_generated_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _LOADED[key] = module
    return module

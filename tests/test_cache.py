"""The kernel cache: a damaged entry is a miss that is rebuilt, never an error on every call;
concurrent writers never see half a file."""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path

import pytest

from recc.backends.triton import cache
from recc.errors import RecError

SOURCE = '"""A generated module."""\n\nVALUE = 42\n'


@pytest.fixture()
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RECC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cache, "_LOADED", {})
    return tmp_path


def _entry(source: str = SOURCE) -> Path:
    return cache.write_module(source, "mod")


def test_invalid_utf8_entry_is_rebuilt(private_cache):
    path = _entry()
    path.write_bytes(b"\xff\xfe not utf-8 \x80")
    assert cache.load_module(SOURCE, "mod").VALUE == 42
    assert path.read_text() == SOURCE


def test_corrupt_bytecode_is_rebuilt(private_cache, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # some machines set it
    assert cache.load_module(SOURCE, "mod").VALUE == 42
    path = _entry()
    pyc = Path(importlib.util.cache_from_source(str(path)))
    assert pyc.exists()
    data = pyc.read_bytes()
    pyc.write_bytes(data[:16] + b"\x00garbage, not marshal data" * 3)  # header kept valid
    cache._LOADED.clear()
    assert cache.load_module(SOURCE, "mod").VALUE == 42


def test_truncated_entry_is_rebuilt(private_cache):
    path = _entry()
    path.write_text(SOURCE[:12])
    assert cache.load_module(SOURCE, "mod").VALUE == 42


def test_concurrent_writers_never_race(private_cache):
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(100):
                source = SOURCE + f"# {i % 3}\n"
                path = cache.write_module(source, "mod")
                assert path.read_text() == source
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=write) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert not list(private_cache.rglob("*.tmp"))


def test_unwritable_cache_is_a_rec_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RECC_CACHE_DIR", str(blocker))
    with pytest.raises(RecError, match="set RECC_CACHE_DIR"):
        cache.write_module(SOURCE, "mod")

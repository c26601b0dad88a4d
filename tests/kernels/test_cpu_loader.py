"""kernels.cpu.loader: the build cache is keyed by the source and flags, not shared blindly."""
from __future__ import annotations

import logging
import shutil

import pytest

from onebit.kernels.cpu import loader


@pytest.fixture
def two_checkouts(tmp_path, monkeypatch):
    monkeypatch.setenv("ONEBIT_KERNEL_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    shutil.copyfile(loader.SOURCE, a / "onebit_cpu.cpp")
    shutil.copyfile(loader.SOURCE, b / "onebit_cpu.cpp")
    return a / "onebit_cpu.cpp", b / "onebit_cpu.cpp"


def test_cache_keyed_by_source_and_flags(two_checkouts, monkeypatch):
    a, b = two_checkouts
    monkeypatch.setattr(loader, "SOURCE", a)
    da = loader.cache_dir()
    monkeypatch.setattr(loader, "SOURCE", b)
    assert loader.cache_dir() == da  # same source elsewhere: same build
    b.write_text(b.read_text() + "\n// changed\n")
    db = loader.cache_dir()
    assert db != da  # another source: its own build, neither rebuilds the other
    monkeypatch.setattr(loader, "CFLAGS", loader.CFLAGS + ["-DX"])
    assert loader.cache_dir() not in (da, db)


def test_build_message_only_when_building(two_checkouts, monkeypatch, caplog):
    from torch.utils import cpp_extension

    a, b = two_checkouts
    calls = []

    def fake_load(name, sources, build_directory, **kw):
        calls.append(sources)
        (loader.Path(build_directory) / f"{name}.so").write_bytes(b"")
        return object()

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    caplog.set_level(logging.INFO, logger="onebit.kernels")
    for src in (a, b, a):  # the second checkout and the rerun find the first one's build
        monkeypatch.setattr(loader, "SOURCE", src)
        loader._build()
    assert sum("building the CPU kernels" in r.getMessage() for r in caplog.records) == 1
    assert len({tuple(s) for s in calls}) == 1  # built from one path: the build command is the same

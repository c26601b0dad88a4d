"""shared_dir (onebit.paths, re-exported by models): where the real models and data are found."""
from __future__ import annotations

from onebit import models, paths
from onebit.eval.data import load_text
from onebit.models import resolve_demo_model, shared_dir


def test_shared_dir_found_from_any_directory(shared, tmp_path, monkeypatch):
    monkeypatch.delenv("ONEBIT_SHARED", raising=False)
    monkeypatch.delenv("ONEBIT_DATA", raising=False)
    monkeypatch.delenv("ONEBIT_DEMO_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared here
    assert shared_dir() == shared.resolve()
    assert load_text("tinystories").strip()
    assert resolve_demo_model() == str(shared.resolve() / "models" / "stories3M")


def test_shared_dir_env_first(shared, tmp_path, monkeypatch):
    alt = tmp_path / "alt"
    (alt / "data").mkdir(parents=True)
    monkeypatch.setenv("ONEBIT_SHARED", str(alt))
    assert shared_dir() == alt.resolve()


def test_shared_dir_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEBIT_SHARED", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "_repo_shared", lambda: tmp_path / "nowhere")
    assert shared_dir() is None
    assert resolve_demo_model() == models.DEMO_HUB_MODEL

"""Shared fixtures: the real models and data in ../shared.

Outside CI a missing ../shared skips the tests that need it; in CI (CI=true)
it is an error, so a broken checkout cannot pass by skipping everything.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ONEBIT_SHARED", ROOT.parent / "shared")).resolve()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(path: Path) -> Path:
    if not path.exists():
        if IN_CI:
            pytest.fail(f"CI needs {path} (../shared beside the checkout)")
        pytest.skip(f"{path} not available")
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return _need(SHARED)


@pytest.fixture(scope="session")
def stories260k() -> str:
    return str(_need(SHARED / "models" / "stories260K"))


@pytest.fixture(scope="session")
def stories3m() -> str:
    return str(_need(SHARED / "models" / "stories3M"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(SHARED / "data")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def fp_260k(stories260k):
    from onebit.models import load_model

    return load_model(stories260k)


@pytest.fixture(scope="session")
def tok_260k(stories260k):
    from onebit.models import load_tokenizer

    return load_tokenizer(stories260k)

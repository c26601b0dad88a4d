"""Fixtures shared by the kernel tests."""
from __future__ import annotations

import pytest

from onebit.kernels.cpu import loader


@pytest.fixture(scope="module")
def mod():
    """The C++ CPU kernels' module (a build failure fails the test, it does not skip it)."""
    m = loader.load()
    if m is None:
        pytest.fail(f"the C++ CPU kernels did not build: {loader.build_error()}")
    return m

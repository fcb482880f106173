"""The typed interface: the .pyi stub matches the built module, and py.typed ships."""

from __future__ import annotations

import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import shadowbucket as sb
from shadowbucket import _native

PKG = Path(sb.__file__).parent


def test_py_typed_and_stub_ship() -> None:
    assert (PKG / "py.typed").exists()
    assert (PKG / "_native.pyi").exists()


def test_stub_names_match_the_module() -> None:
    """Every public name of the native module is in the stub and the other way round, and each
    method's parameter names agree (stubtest below checks kinds and defaults too)."""
    stub = (PKG / "_native.pyi").read_text()
    for name in _native.__all__:
        assert f"{name}" in stub, name
    for cls in (_native.Engine, _native.History, _native.Model):
        for attr, value in vars(cls).items():
            if attr.startswith("_"):
                continue
            assert f"def {attr}(" in stub, f"{cls.__name__}.{attr} is not in the stub"
            sig = getattr(value, "__text_signature__", None)
            if sig:
                params = [
                    p for p in inspect.signature(getattr(cls, attr)).parameters if p != "self"
                ]
                for p in params:
                    assert p in stub, f"{cls.__name__}.{attr}: parameter {p}"


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_stubtest() -> None:
    """mypy's stubtest: the stub's names, signatures and defaults against the runtime module."""
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "shadowbucket", "--concise"],
        capture_output=True,
        text=True,
        cwd=PKG.parent,
    )
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_package_and_tests_type_check() -> None:
    """The package and these tests type-check against the stub (calls with the wrong types in
    the tests carry `type: ignore`, which `warn_unused_ignores` holds to being needed)."""
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "shadowbucket", "tests"],
        capture_output=True,
        text=True,
        cwd=PKG.parent,
    )
    assert r.returncode == 0, r.stdout + r.stderr

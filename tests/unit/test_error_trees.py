"""Each package's exceptions live in its ``errors.py`` and are drawn there, once, in the
module docstring; the ones a caller may retry unchanged are marked ``[retry]`` and
subclass :class:`~schemas.errors.Transient`, and no other is."""

from __future__ import annotations

import importlib
import pkgutil
import re
from types import ModuleType

import pytest

from schemas.errors import Transient

PACKAGES = ("schemas", "agents", "trainer", "infra", "serving")


def _modules(package: str) -> list[ModuleType]:
    root = importlib.import_module(package)
    names = [package] + [
        info.name
        for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}.")
        if ".migrations" not in info.name and not info.name.endswith("__main__")
    ]
    return [importlib.import_module(name) for name in names]


def _exceptions(package: str) -> set[type[BaseException]]:
    """Every exception class defined in a module of ``package``, found from the class tree
    (so a private class, or one no module exports, counts too)."""
    _modules(package)
    found: set[type[BaseException]] = set()
    pending: list[type[BaseException]] = [BaseException]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                pending.append(sub)
                if sub.__module__ == package or sub.__module__.startswith(f"{package}."):
                    found.add(sub)
    return {c for c in found if c.__module__ == package or c.__module__.startswith(f"{package}.")}


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exception_is_defined_and_drawn_in_errors_py(package: str) -> None:
    classes = _exceptions(package)
    outside = sorted(c.__qualname__ for c in classes if c.__module__ != f"{package}.errors")
    assert outside == [], f"define these in {package}/errors.py: {outside}"
    if not classes:
        return
    drawing = importlib.import_module(f"{package}.errors").__doc__ or ""
    undrawn = sorted(c.__name__ for c in classes if not re.search(rf"\b{c.__name__}\b", drawing))
    assert undrawn == [], f"draw these in the {package}/errors.py docstring: {undrawn}"


@pytest.mark.parametrize("package", PACKAGES)
def test_retry_marks_match_the_transient_classes(package: str) -> None:
    classes = _exceptions(package)
    drawing = (importlib.import_module(f"{package}.errors").__doc__ or "") if classes else ""
    marked = set(re.findall(r"(\w+)(?: \([\w, ]+\))? \[retry\]", drawing))
    # A subclass of a transient class inherits the mark; the drawing marks where it starts.
    transient_roots = {
        c.__name__
        for c in classes
        if issubclass(c, Transient)
        and not any(issubclass(base, Transient) and base is not Transient for base in c.__bases__)
    }
    assert marked == transient_roots

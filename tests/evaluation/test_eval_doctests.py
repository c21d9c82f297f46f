"""The examples in the evaluation package's docstrings run and stay true."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import evaluation

MODULES = ["evaluation", *(m.name for m in pkgutil.walk_packages(evaluation.__path__, prefix="evaluation."))]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_hold(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0

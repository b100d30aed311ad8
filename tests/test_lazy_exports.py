"""Lazily exported names are also imported under TYPE_CHECKING (so mypy sees real types): the two
lists must name the same things from the same modules."""

import ast
import importlib
import inspect

import pytest


def _type_checking_imports(module) -> dict[str, str]:
    tree = ast.parse(inspect.getsource(module))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom):
                    found.update({alias.name: stmt.module for alias in stmt.names})
    return found


@pytest.mark.parametrize("package", ["synthvg.llm", "synthvg.storage", "synthvg.schemas"])
def test_type_checking_imports_match_lazy_exports(package):
    module = importlib.import_module(package)
    assert _type_checking_imports(module) == module._EXPORTS


@pytest.mark.parametrize("package", ["synthvg.llm", "synthvg.storage", "synthvg.schemas"])
def test_every_exported_name_resolves(package):
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name

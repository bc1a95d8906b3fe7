"""The package's public surface: each name loads its module on first use (PEP 562), and
what type checkers are told (the ``TYPE_CHECKING`` imports) is what runs."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import lattice_protocol


def names_told_to_type_checkers() -> dict[str, str]:
    """Exported name -> module, from the imports under ``if TYPE_CHECKING:``."""
    tree = ast.parse(Path(lattice_protocol.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    return {alias.asname or alias.name: str(statement.module)
            for statement in block.body if isinstance(statement, ast.ImportFrom)
            for alias in statement.names}


def test_every_exported_name_is_its_modules_object() -> None:
    told = names_told_to_type_checkers()
    assert set(lattice_protocol.__all__) == {"__version__", *told}
    for name, module in told.items():
        source = importlib.import_module(f"lattice_protocol.{module}")
        assert getattr(lattice_protocol, name) is getattr(source, name), name


def test_importing_the_package_loads_only_its_version() -> None:
    code = ("import sys, lattice_protocol\n"
            "print(sorted(m for m in sys.modules if m.startswith('lattice_protocol')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "['lattice_protocol', 'lattice_protocol._version']"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchName"):
        lattice_protocol.NoSuchName  # noqa: B018

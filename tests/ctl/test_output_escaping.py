"""Names from the gateway are shown escaped when they carry characters that would
reorder, hide or forge terminal text (lattice_ctl/output.py safe_text)."""

from __future__ import annotations

import pytest

from lattice_ctl.output import safe_text


@pytest.mark.parametrize(("raw", "shown"), [
    ("Lab \u202egnp.exe", "Lab \\u202egnp.exe"),  # RIGHT-TO-LEFT OVERRIDE
    ("a\u2066b\u2069", "a\\u2066b\\u2069"),  # bidi isolates
    ("in\u200bvisible\ufeff", "in\\u200bvisible\\ufeff"),  # zero-width space, BOM
    ("bell\x07 esc\x1b[31m", "bell\\x07 esc\\x1b[31m"),  # control characters
    ("two\u2028lines", "two\\u2028lines"),  # LINE SEPARATOR
])
def test_invisible_and_reordering_characters_are_escaped(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown


def test_ordinary_names_are_shown_as_they_are() -> None:
    for name in ("Ada's MacBook Pro", "Büro-PC", "東京の机", "laptop 🚀"):
        assert safe_text(name) == name

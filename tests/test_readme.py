"""The README documents every setting the code reads (so an operator can find them all)."""

from __future__ import annotations

from pathlib import Path

from rtrec.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    text = README.read_text()
    missing = [f"RTREC_{name.upper()}" for name in Settings.model_fields if f"`RTREC_{name.upper()}`" not in text]
    assert missing == []

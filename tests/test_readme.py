"""Every ```python block of README.md runs, in order, in one namespace."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text):
    return [match.group(1) for match in BLOCK.finditer(text)]


def test_readme_has_python_blocks():
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    # The seed example plus one example per documented feature.
    assert len(blocks) >= 15, f"README.md has only {len(blocks)} python blocks"


def test_block_extraction_finds_fenced_code_only():
    text = "intro\n```python\na = 1\n```\n```shell\nmake\n```\n```python\nb = a\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a\n"]


def test_readme_python_blocks_run_in_order(tmp_path, monkeypatch):
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)  # files the examples save land in a temporary folder
    namespace = {"__name__": "__readme__"}
    for number, source in enumerate(blocks, start=1):
        first_line = source.strip().splitlines()[0] if source.strip() else ""
        try:
            code = compile(source, f"README.md python block {number}", "exec")
            exec(code, namespace)
        except Exception as error:  # noqa: BLE001 - report which block failed
            pytest.fail(
                f"README.md python block {number} (starting {first_line!r}) failed: "
                f"{type(error).__name__}: {error}"
            )
    assert os.getcwd() == str(tmp_path)

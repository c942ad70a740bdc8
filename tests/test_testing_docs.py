"""docs/testing.md shows examples/testing/ as it is, and those examples pass in a project
of their own (no conftest, no configuration: only the installed plugin)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "testing"
# A block that shows a whole file starts with a comment naming it.
BLOCK = re.compile(r"```python\n(# (\w+\.py)\b.*?\n)```", re.DOTALL)


def documented() -> dict[str, str]:
    text = (ROOT / "docs" / "testing.md").read_text()
    return {match.group(2): match.group(1) for match in BLOCK.finditer(text)}


def test_the_page_shows_every_example_file_exactly() -> None:
    blocks = documented()
    files = {path.name: path.read_text() for path in EXAMPLES.glob("*.py")}
    assert sorted(blocks) == sorted(files)
    for name, text in files.items():
        assert blocks[name] == text, f"docs/testing.md shows another {name}"


@pytest.mark.pytester
def test_the_examples_pass_in_a_project_of_their_own(pytester: pytest.Pytester) -> None:
    for path in EXAMPLES.glob("*.py"):
        shutil.copy(path, pytester.path / path.name)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=10)

"""The documentation runs: every ``python`` code block of README.md and docs/*.md, and every docstring example
(``>>>``) of the orthojax package.

The code blocks of one page run in order in one namespace, as a reader pasting them into one session
would; a block fenced as ``text``, ``bash`` or anything other than ``python`` is not run.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import orthojax

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    """The ``python`` fenced code blocks of a Markdown text, in order."""
    return [m.group(1) for m in _BLOCK.finditer(text)]


def test_python_blocks_finds_only_python_fences():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]


@pytest.mark.parametrize("page", [p for p in PAGES if p.exists()], ids=lambda p: p.name)
def test_page_code_blocks_run(page: Path):
    blocks = python_blocks(page.read_text())
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as error:  # the message names the page and block
            raise AssertionError(f"{page.name}, python block {i} failed: {type(error).__name__}: {error}\n"
                                 f"{block}") from error


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(orthojax.__path__, "orthojax."):
        if info.name.endswith("__main__") or ".convert_vgg16" in info.name:
            continue
        module = importlib.import_module(info.name)
        if doctest.DocTestFinder(exclude_empty=True).find(module):
            if any(test.examples for test in doctest.DocTestFinder().find(module)):
                names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name: str):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed"

"""The documentation runs: every ``python`` code block of README.md and docs/*.md, and every docstring example
(``>>>``) of the orthojax package.

The code blocks of one page run in order in one namespace, as a reader pasting them into one session
would; a block fenced as ``text``, ``bash`` or anything other than ``python`` is not run. The examples of
the method modules start from a small 3-task ``problem`` and its ``params``, ``batch`` and ``rng``
(:func:`_method_example_globals`), as the package's own example (``orthojax.methods``) builds one.
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


def _method_example_globals() -> dict:
    """What the method modules' examples assume, as a reader of :mod:`orthojax.methods` has it: a 3-task
    ``problem`` (a shared tanh encoder, one linear output per task), its ``params``, a ``batch`` of 8
    examples (batch axis first, so that it can be halved), an ``rng`` and a ``loader`` of 4 batches."""
    import jax
    import jax.numpy as jnp

    from orthojax.methods import MultiTaskProblem

    def task_losses(params, batch, rng):
        x, ys = batch
        predictions = jnp.tanh(x @ params["encoder"]["kernel"]) @ params["heads"]["kernel"]   # (B, 3)
        return jnp.mean((predictions - ys) ** 2, axis=0), None

    params = {"encoder": {"kernel": jnp.linspace(-0.5, 0.5, 12).reshape(3, 4)},
              "heads": {"kernel": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)}}
    x = jnp.linspace(-1.0, 1.0, 24).reshape(8, 3)
    batch = (x, jnp.stack([jnp.sin(x[:, 0]), jnp.cos(x[:, 1]), x[:, 2] ** 2], axis=1))
    problem = MultiTaskProblem(task_losses, last_shared="encoder", shared="encoder")
    return {"jax": jax, "jnp": jnp, "params": params, "problem": problem, "batch": batch,
            "rng": jax.random.key(0), "loader": [batch] * 4}


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name: str):
    module = importlib.import_module(name)
    extra = _method_example_globals() if name.startswith("orthojax.methods.") else None
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False,
                             extraglobs=extra)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed"

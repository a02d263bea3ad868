"""Every ```python block of README.md runs as it stands, each in a fresh namespace.

A block that must not run is preceded by ``<!-- not run: <reason> -->`` on the line above
its fence, and the reason may not be empty. Shell commands are ```bash blocks and are not
run here (``test_repository.py`` checks the README's two commands); a program's output is
a ```text block.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import pytest

# The README's code is user code, run as users run it: under JAX's default promotion (its
# examples use optax's Adam, whose bias correction strict promotion refuses).
pytestmark = pytest.mark.standard_promotion("README blocks are user code under default promotion")

README = Path(__file__).resolve().parent.parent / "README.md"
LANGUAGES = {"python", "bash", "text"}
NOT_RUN = re.compile(r"<!--\s*not run:(.*)-->")


class Block(NamedTuple):
    language: str
    line: int  # 1-based line of the block's first line of code
    code: str
    not_run: str | None  # the reason from a "<!-- not run: reason -->" line; None: run it


def fenced_blocks(text: str) -> list[Block]:
    """The fenced code blocks of ``text``, in order; raises on an unterminated fence."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```"):
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"README.md:{i + 1}: the fence is never closed"
            marker = NOT_RUN.fullmatch(lines[i - 1].strip()) if i > 0 else None
            not_run = marker.group(1).strip() if marker else None
            blocks.append(Block(fence[3:].strip(), i + 2, "\n".join(lines[i + 1 : end]), not_run))
            i = end
        i += 1
    return blocks


BLOCKS = [b for b in fenced_blocks(README.read_text()) if b.language == "python"]


def test_every_fence_names_a_language_and_there_is_python_to_run():
    blocks = fenced_blocks(README.read_text())
    for block in blocks:
        assert block.language in LANGUAGES, f"README.md:{block.line - 1}: ```{block.language}"
    assert sum(b.not_run is None for b in BLOCKS) >= 3


def test_fenced_blocks_parse_the_not_run_convention():
    text = "a\n<!-- not run: needs a GPU -->\n```python\nx = 1\ny = 2\n```\n```bash\nls\n```\n"
    assert fenced_blocks(text) == [
        Block("python", 4, "x = 1\ny = 2", "needs a GPU"),
        Block("bash", 8, "ls", None),
    ]


@pytest.mark.parametrize("block", BLOCKS, ids=[f"line{b.line}" for b in BLOCKS])
def test_readme_python_block_runs(block):
    if block.not_run is not None:
        assert block.not_run, f"README.md:{block.line}: a not-run block needs a reason"
        pytest.skip(f"README.md:{block.line}: not run: {block.not_run}")
    # Padded so that a traceback's line numbers are the README's own.
    code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
    try:
        exec(code, {"__name__": f"readme_line{block.line}"})
    except Exception as error:
        raise AssertionError(f"the README.md block at line {block.line} failed") from error

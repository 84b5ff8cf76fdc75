"""Every ```python block in docs/**/*.md runs as written (each file's blocks share one namespace).

Blocks that are not meant to run use another fence language (```text, ```bash)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.joinpath("docs")
DOCS = sorted(ROOT.rglob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("path", [p for p in DOCS if BLOCK.search(p.read_text())], ids=_name)
def test_code_blocks_run(path, capsys):
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(BLOCK.findall(path.read_text())):
        exec(compile(code, f"{_name(path)}[block {i}]", "exec"), namespace)
    out = capsys.readouterr().out
    if _name(path) == "quickstart.md":  # the values the page prints in its comments
        assert "['1', '3']" in out and "{'1': (64, 4), '3': (64, 4)}" in out
        assert "17 spiking layers" in out and out.count("|grad fc1|") == 5


def test_guide_pages_are_collected():
    """The recursive glob reaches the guide (a flat glob would silently skip it)."""
    names = {_name(p) for p in DOCS if BLOCK.search(p.read_text())}
    assert {"quickstart.md", "guide/hooks.md", "guide/options.md"} <= names

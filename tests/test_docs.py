"""Every ```python block in docs/*.md runs as written (each file's blocks share one namespace)."""
import re
from pathlib import Path

import pytest

DOCS = sorted(Path(__file__).resolve().parent.parent.joinpath("docs").glob("*.md"))
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


@pytest.mark.parametrize("path", [p for p in DOCS if BLOCK.search(p.read_text())], ids=lambda p: p.name)
def test_code_blocks_run(path, capsys):
    namespace: dict = {}
    for i, code in enumerate(BLOCK.findall(path.read_text())):
        exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)
    out = capsys.readouterr().out
    if path.name == "quickstart.md":  # the values the page prints in its comments
        assert "['1', '3']" in out and "{'1': (64, 4), '3': (64, 4)}" in out
        assert "17 spiking layers" in out and out.count("|grad fc1|") == 5

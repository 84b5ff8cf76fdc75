"""What the resumable benchmarks share: a JSON-lines file of runs (one line per run, runs already
there are not repeated) and a markdown page whose hand-written reading survives a rewrite."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Hashable

READING = "<!-- reading: written by hand, kept when the table is rewritten -->"


def check_destinations(*paths: Path) -> None:
    """Create the folders and open each file for appending, before hours of training."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass


def load_runs(path: Path, key: Callable[[dict], Hashable]) -> dict:
    """``key(run) -> run`` for every line of ``path`` (empty when it does not exist)."""
    runs = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                runs[key(r)] = r
    return runs


def append_run(path: Path, run: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(run) + "\n")


def write_page(path: Path, table: str) -> None:
    """``table`` followed by the page's hand-written reading (from ``READING`` on), kept as it was."""
    old = path.read_text() if path.exists() else ""
    reading = old[old.index(READING):] if READING in old else READING + "\n"
    path.write_text(table + "\n" + reading)
    print(f"wrote {path}")

"""Small helpers shared by the dataset modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


class DatasetNotFoundError(RuntimeError):
    """A data set's files are not where the loader looks for them (and were not downloaded).

    The message says where the files must be and how to get them.  It is a
    ``RuntimeError`` like torchvision's own "Dataset not found" error.
    """


def expand_root(root: PathLike) -> Path:
    return Path(os.path.expanduser(os.fspath(root)))


def write_files_atomically(folder: Path, payloads) -> None:
    """Write ``(name, bytes)`` pairs into ``folder``: all staged under temporary names first, then
    renamed into place, so an interrupted run never leaves a partial data set behind."""
    staged = []
    try:
        for name, payload in payloads:
            tmp = folder / f".{name}.tmp{os.getpid()}"
            tmp.write_bytes(payload)
            staged.append((tmp, folder / name))
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()

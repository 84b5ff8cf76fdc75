"""Small helpers shared by the dataset modules."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

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


def load_with_offline_copy(cls, name: str, root: PathLike, *, present: Callable[[str], bool],
                           find_copy: Callable[[], Optional[Any]], write_copy: Callable[[str, Any], Any],
                           raw_folder: Callable[[str], Path], hint: str, download: bool, offline: bool, **kwargs):
    """A torchvision data set ``cls(root, ...)``: from its files under ``root`` if ``present``; else,
    with ``offline``, from an offline copy (``find_copy()``, written by ``write_copy(root, copy)``);
    else downloaded by torchvision with ``download``; else, or if that fails,
    :class:`DatasetNotFoundError` with ``hint``."""
    root = os.fspath(expand_root(root))
    if present(root):
        return cls(root, download=False, **kwargs)
    copy = find_copy() if offline else None
    if copy is not None:
        write_copy(root, copy)
        return cls(root, download=False, **kwargs)
    where = raw_folder(root)
    if not download:
        raise DatasetNotFoundError(f"{name} is not in {where} and download=False.\n" + hint)
    try:
        return cls(root, download=True, **kwargs)
    except Exception as exc:  # URLError, RuntimeError from every mirror failing, ...
        raise DatasetNotFoundError(
            f"{name} is not in {where} and torchvision could not download it "
            f"({type(exc).__name__}: {exc}).\n" + hint
        ) from exc

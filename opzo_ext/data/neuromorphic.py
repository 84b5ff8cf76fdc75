"""Neuromorphic data sets through tonic, with the paper's preprocessing (appendix C.3.1).

Each loader returns tonic's own data set class (``tonic.datasets.NMNIST``,
``DVSGesture``, ``CIFAR10DVS``) with a frame pipeline as its transform, so a
user with the files, or with internet access and ``download=True``, gets
tonic's standard code path.  Samples are ``(frames, label)`` with frames a
float32 tensor ``[T, 2, H, W]`` (channel 0: OFF events, channel 1: ON
events); a DataLoader gives ``[B, T, 2, H, W]`` and the training loop feeds
``x[:, t]`` at step ``t``.

============  =========================================================  ===============
data set      pipeline (``transform="paper"``)                           sample
============  =========================================================  ===============
N-MNIST       event counts in 3 ms bins from t = 0, first 30 bins        [30, 2, 34, 34]
              (``ToFrame(time_window=3000, start_time=0,
              end_time=90000)``)
DVS-Gesture   20 frames of equal event counts (``split_by="number"``,    [20, 2, 48, 48]
              Fang et al. 2021), resized 128 -> 48 by (antialiased)
              bilinear interpolation
CIFAR10-DVS   10 frames of equal event counts, resized 128 -> 48,        [10, 2, 48, 48]
              train: random crop 48 with zero padding 4 (the same crop
              for every frame), then per-polarity normalisation with the
              global mean/std of the training frames (all time steps);
              split 9000/1000: the first 900 recordings of each class
              (natural file order) train, the last 100 test
============  =========================================================  ===============

Frame counts are not clipped (use ``binary=True`` of :class:`EventFrames` for
0/1 frames).  With ``split_by="number"`` tonic drops the ``n_events % T``
last events of a recording (SpikingJelly adds them to the last frame).

Where the files go (tonic 1.7), ``<root>`` being the ``root`` argument:

* N-MNIST: ``<root>/NMNIST/train.zip`` and ``test.zip`` (the archives), and
  extracted ``<root>/NMNIST/Train/<digit>/*.bin`` and ``Test/<digit>/*.bin``.
* DVS-Gesture (tonic's pre-processed copy): ``<root>/DVSGesture/ibmGestureTrain.tar.gz``
  and ``ibmGestureTest.tar.gz``, and extracted
  ``<root>/DVSGesture/ibmGestureTrain/user<NN>_<lighting>/<label>.npy`` (same for Test).
* CIFAR10-DVS (tonic's AEDAT4 copy): ``<root>/CIFAR10DVS/CIFAR10DVS.zip``
  and extracted ``<root>/CIFAR10DVS/<class>/*.aedat4`` (``airplane`` ...
  ``truck``).  Reading them needs the package ``aedat``, which tonic does not
  install (``opzo_ext[data]`` does).

tonic decides that a data set is present when the archive file exists (its
checksum is not verified) and enough extracted files are found (10000 .bin,
100 .npy, 1000 .aedat4); otherwise it downloads.  These loaders make the
same check first and, with ``download=False`` (the default: the downloads
are large), raise :class:`DatasetNotFoundError` with the layout above instead.

``cache_dir`` (paper pipelines only) caches the deterministic frames of
every sample on disk with ``tonic.DiskCachedDataset``; augmentation and
normalisation run after the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._optional import require
from ._common import DatasetNotFoundError, PathLike, expand_root

_PAPER = "paper"
_SPLIT_BY = ("time_window", "number", "time")

#: Defaults of the paper (appendix C.3.1).
NMNIST_STEPS = 30
NMNIST_TIME_WINDOW_US = 3000
DVS_GESTURE_FRAMES = 20
CIFAR10_DVS_FRAMES = 10
DVS_SIZE = 48


# --------------------------------------------------------------------------- frame transforms


class EventFrames:
    """Events (tonic structured array) -> float32 numpy frames ``[n_frames, P, H, W]``.

    ``split_by``:

    * ``"time_window"``: bins of ``time_window`` (same unit as ``t``, µs for
      tonic) starting at ``t = start_time`` (default 0, not at the first
      event as tonic's ``ToFrame`` does by default); events at or after
      ``start_time + n_frames * time_window`` are dropped.
    * ``"number"``: ``n_frames`` bins with equal event counts (tonic's ``n_event_bins``).
    * ``"time"``: ``n_frames`` bins of equal duration between the first and last event
      (tonic's ``n_time_bins``).

    Always returns exactly ``n_frames`` frames (also for an empty recording).
    ``binary=True`` clips the counts at 1.
    """

    def __init__(self, sensor_size: Tuple[int, int, int], n_frames: int, split_by: str = "number",
                 time_window: Optional[float] = None, start_time: float = 0, binary: bool = False):
        if split_by not in _SPLIT_BY:
            raise ValueError(f"split_by must be one of {_SPLIT_BY}, got {split_by!r}")
        if split_by == "time_window" and not time_window:
            raise ValueError("split_by='time_window' needs time_window")
        if n_frames < 1:
            raise ValueError("n_frames must be >= 1")
        self.sensor_size = tuple(int(s) for s in sensor_size)
        self.n_frames = int(n_frames)
        self.split_by = split_by
        self.time_window = time_window
        self.start_time = start_time
        self.binary = bool(binary)

    def _to_frame(self):
        require("tonic", "EventFrames (event binning)")
        from tonic.transforms import ToFrame

        if self.split_by == "time_window":
            return ToFrame(self.sensor_size, time_window=self.time_window, start_time=self.start_time,
                           end_time=self.start_time + self.n_frames * self.time_window)
        if self.split_by == "number":
            return ToFrame(self.sensor_size, n_event_bins=self.n_frames)
        return ToFrame(self.sensor_size, n_time_bins=self.n_frames)

    def __call__(self, events: np.ndarray) -> np.ndarray:
        w, h, p = self.sensor_size
        out = np.zeros((self.n_frames, p, h, w), dtype=np.float32)
        if len(events):
            frames = np.asarray(self._to_frame()(events))
            n = min(len(frames), self.n_frames)
            if frames.shape[1:] != out.shape[1:]:
                raise ValueError(f"frames of shape {frames.shape[1:]}, expected {out.shape[1:]} "
                                 f"(sensor_size {self.sensor_size})")
            out[:n] = frames[:n]
        if self.binary:
            np.minimum(out, 1.0, out=out)
        return out

    def __repr__(self) -> str:
        extra = ""
        if self.split_by == "time_window":
            extra = f", time_window={self.time_window}, start_time={self.start_time}"
        return (f"{type(self).__name__}(sensor_size={self.sensor_size}, n_frames={self.n_frames}, "
                f"split_by={self.split_by!r}{extra}, binary={self.binary})")


class ResizeFrames:
    """Frames ``[T, P, H, W]`` -> ``[T, P, size, size]`` by interpolation (numpy in, numpy out; tensor in, tensor out).

    ``mode="bilinear"`` with ``antialias=True`` (like PIL's bilinear resize the
    OTTT code used) averages the counts over the footprint when downsampling.
    """

    def __init__(self, size: Union[int, Tuple[int, int]] = DVS_SIZE, mode: str = "bilinear", antialias: bool = True):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mode = mode
        self.antialias = antialias

    def __call__(self, frames):
        is_numpy = isinstance(frames, np.ndarray)
        x = torch.as_tensor(frames, dtype=torch.float32)
        if tuple(x.shape[-2:]) != self.size:
            kwargs = {"antialias": self.antialias} if self.mode in ("bilinear", "bicubic") else {}
            align = {"align_corners": False} if self.mode in ("bilinear", "bicubic") else {}
            x = torch.nn.functional.interpolate(x, size=self.size, mode=self.mode, **align, **kwargs)
        return x.numpy() if is_numpy else x

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, mode={self.mode!r}, antialias={self.antialias})"


class FramesToTensor:
    """numpy frames -> float32 ``torch.Tensor`` (no scaling)."""

    def __call__(self, frames) -> torch.Tensor:
        return torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames,
                               dtype=torch.float32)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class RandomCropFrames:
    """Random crop ``size`` after zero ``padding``, the same window for every frame of ``[T, P, H, W]``."""

    def __init__(self, size: Union[int, Tuple[int, int]] = DVS_SIZE, padding: int = 4,
                 generator: Optional[torch.Generator] = None):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding = int(padding)
        self.generator = generator

    def __call__(self, frames) -> torch.Tensor:
        x = torch.as_tensor(frames, dtype=torch.float32)
        if self.padding:
            x = torch.nn.functional.pad(x, (self.padding,) * 4)
        h, w = x.shape[-2:]
        th, tw = self.size
        if h < th or w < tw:
            raise ValueError(f"crop {self.size} larger than the padded frames {(h, w)}")
        i = int(torch.randint(h - th + 1, (1,), generator=self.generator))
        j = int(torch.randint(w - tw + 1, (1,), generator=self.generator))
        return x[..., i:i + th, j:j + tw].contiguous()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, padding={self.padding})"


class NormalizeFrames:
    """``(x - mean[c]) / std[c]`` over the polarity channel ``c`` of ``[T, P, H, W]``; returns a tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")

    def __call__(self, frames) -> torch.Tensor:
        x = torch.as_tensor(frames, dtype=torch.float32)
        shape = (len(self.mean),) + (1,) * 2
        mean = torch.tensor(self.mean, dtype=x.dtype).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype).view(shape)
        return (x - mean) / std

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


def _compose(steps):
    from torchvision.transforms import Compose

    return Compose([s for s in steps if s is not None])


# --------------------------------------------------------------------------- pipelines


def nmnist_transform(n_steps: int = NMNIST_STEPS, time_window_us: float = NMNIST_TIME_WINDOW_US,
                     binary: bool = False):
    """N-MNIST: event counts in ``time_window_us`` bins from t = 0, the first ``n_steps``: ``[n_steps, 2, 34, 34]``."""
    return _compose([EventFrames((34, 34, 2), n_steps, "time_window", time_window_us, binary=binary), FramesToTensor()])


def _dvs_frames(n_frames: int, size, split_by: str, sensor_size=(128, 128, 2), binary: bool = False):
    return _compose([EventFrames(sensor_size, n_frames, split_by, binary=binary), ResizeFrames(size)])


def dvs_gesture_transform(n_frames: int = DVS_GESTURE_FRAMES, size: int = DVS_SIZE, split_by: str = "number"):
    """DVS-Gesture: ``n_frames`` frames (equal event counts by default) resized to ``size``: ``[T, 2, size, size]``."""
    return _compose([_dvs_frames(n_frames, size, split_by), FramesToTensor()])


def _cifar10_dvs_post(train: bool, mean, std, size, crop_padding: int):
    steps = [FramesToTensor()]
    if train and crop_padding is not None and crop_padding >= 0:
        steps.append(RandomCropFrames(size, padding=crop_padding))
    if mean is not None:
        steps.append(NormalizeFrames(mean, std))
    return _compose(steps)


def cifar10_dvs_transform(train: bool = True, mean: Optional[Sequence[float]] = None,
                          std: Optional[Sequence[float]] = None, n_frames: int = CIFAR10_DVS_FRAMES,
                          size: int = DVS_SIZE, split_by: str = "number", crop_padding: int = 4):
    """CIFAR10-DVS: frames resized to ``size``, train-time random crop, normalisation (if ``mean``/``std`` given)."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    return _compose([_dvs_frames(n_frames, size, split_by), _cifar10_dvs_post(train, mean, std, size, crop_padding)])


# --------------------------------------------------------------------------- presence checks


_LAYOUT = {
    "NMNIST": (
        "  {loc}/{archive}   (the downloaded archive; tonic checks that it exists, not its checksum)\n"
        "  {loc}/{folder}/<digit 0-9>/*.bin   (the extracted recordings; tonic wants >= 10000 of them)"
    ),
    "DVSGesture": (
        "  {loc}/{archive}   (the downloaded archive; tonic checks that it exists, not its checksum)\n"
        "  {loc}/{folder}/user<NN>_<lighting>/<label>.npy   (tonic's pre-processed recordings: int arrays "
        "[N, 4] with columns x, y, p, t in ms; tonic wants >= 100 of them)"
    ),
    "CIFAR10DVS": (
        "  {loc}/{archive}   (the downloaded archive; tonic checks that it exists, not its checksum)\n"
        "  {loc}/<class>/*.aedat4   (<class> = airplane, automobile, ..., truck; the per-class zips "
        "extracted; tonic wants >= 1000 of them)"
    ),
}
_EXT = {"NMNIST": ".bin", "DVSGesture": ".npy", "CIFAR10DVS": ".aedat4"}
_NICE = {"NMNIST": "N-MNIST", "DVSGesture": "DVS-Gesture", "CIFAR10DVS": "CIFAR10-DVS"}


def _bare_tonic_dataset(cls, root: str, train: bool):
    """An instance of tonic's class with the attributes its ``_check_exists`` reads, without running ``__init__``."""
    from tonic.dataset import Dataset

    obj = cls.__new__(cls)
    Dataset.__init__(obj, root)
    name = cls.__name__
    if name == "NMNIST":
        obj.filename = cls.train_filename if train else cls.test_filename
        obj.folder_name = cls.train_folder if train else cls.test_folder
        obj.url = cls.train_url if train else cls.test_url
    elif name == "DVSGesture":
        obj.filename = cls.train_filename if train else cls.test_filename
        obj.folder_name = "ibmGestureTrain" if train else "ibmGestureTest"
        obj.url = cls.train_url if train else cls.test_url
    return obj


def _layout_message(cls, root: str, train: Optional[bool]) -> str:
    obj = _bare_tonic_dataset(cls, root, bool(train))
    name = cls.__name__
    loc = obj.location_on_system
    archive = obj.filename
    folder = getattr(obj, "folder_name", "")
    archive_present = os.path.isfile(os.path.join(loc, archive))
    n_files = 0
    search = os.path.join(loc, folder) if folder else loc
    if os.path.isdir(search):
        for _, _, files in os.walk(search):
            n_files += sum(f.endswith(_EXT[name]) for f in files)
    split = "" if train is None else (" (train)" if train else " (test)")
    found = f"found: archive {'present' if archive_present else 'missing'}, {n_files} {_EXT[name]} files."
    if n_files and not archive_present:
        found += (f" The extracted files are there but the archive is not: tonic 1.7 also requires "
                  f"{os.path.join(loc, archive)} to exist (put it back, or create an empty file of that name).")
    return (
        f"{_NICE[name]}{split} was not found under {loc}.\n"
        f"tonic.datasets.{name}(save_to={root!r}) expects:\n"
        + _LAYOUT[name].format(loc=loc, archive=archive, folder=folder)
        + f"\n({found})\n"
        f"Pass download=True to let tonic download ({obj.url}) and extract it there, or put the files there."
    )


def _ensure_present(cls, root: str, train: Optional[bool], download: bool) -> None:
    obj = _bare_tonic_dataset(cls, root, bool(train))
    if not download and not obj._check_exists():
        raise DatasetNotFoundError(_layout_message(cls, root, train))


def _construct(cls, root: str, train: Optional[bool], download: bool, **kwargs):
    _ensure_present(cls, root, train, download)
    if train is not None:
        kwargs["train"] = train
    try:
        return cls(root, **kwargs)
    except Exception as exc:
        if not download:
            raise
        raise DatasetNotFoundError(
            f"tonic could not download/extract {_NICE[cls.__name__]} ({type(exc).__name__}: {exc}).\n"
            + _layout_message(cls, root, train)
        ) from exc


def _natural_key(path: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _sort_samples(ds) -> None:
    """Put a tonic data set's samples in natural path order (tonic lists files in os.walk order, unsorted)."""
    n = len(ds.data)
    order = sorted(range(n), key=lambda i: _natural_key(str(ds.data[i])))
    for attr, value in list(vars(ds).items()):
        if isinstance(value, list) and len(value) == n:
            setattr(ds, attr, [value[i] for i in order])


def _param_tag(**params) -> str:
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def _check_transform(transform, cache_dir):
    if isinstance(transform, str) and transform != _PAPER:
        raise ValueError(f"transform must be a callable, None or {_PAPER!r}")
    if cache_dir is not None and transform != _PAPER:
        raise ValueError("cache_dir works with transform='paper' only")


def _cached(ds, cache_dir, name: str, tag: str, post, target_transform):
    from tonic import DiskCachedDataset

    path = os.path.join(os.fspath(expand_root(cache_dir)), f"{name}_{tag}")
    return DiskCachedDataset(ds, cache_path=path, transform=post, target_transform=target_transform)


# --------------------------------------------------------------------------- loaders


def load_nmnist(
    root: PathLike,
    train: bool = True,
    transform: Union[Callable, None, str] = _PAPER,
    target_transform: Optional[Callable] = None,
    download: bool = False,
    n_steps: int = NMNIST_STEPS,
    time_window_us: float = NMNIST_TIME_WINDOW_US,
    cache_dir: Optional[PathLike] = None,
):
    """``tonic.datasets.NMNIST`` with the paper's frames (``transform="paper"``): ``[30, 2, 34, 34]`` float32.

    ``transform=None`` gives tonic's raw events.  See the module doc for the file layout.
    """
    require("tonic", "load_nmnist (N-MNIST)")
    from tonic.datasets import NMNIST

    _check_transform(transform, cache_dir)
    root = os.fspath(expand_root(root))
    if transform == _PAPER:
        frames = EventFrames(NMNIST.sensor_size, n_steps, "time_window", time_window_us)
        if cache_dir is not None:
            ds = _construct(NMNIST, root, train, download, transform=frames)
            tag = _param_tag(split="train" if train else "test", n_steps=n_steps, tw=time_window_us)
            return _cached(ds, cache_dir, "NMNIST", tag, FramesToTensor(), target_transform)
        transform = _compose([frames, FramesToTensor()])
    return _construct(NMNIST, root, train, download, transform=transform, target_transform=target_transform)


def load_dvs_gesture(
    root: PathLike,
    train: bool = True,
    transform: Union[Callable, None, str] = _PAPER,
    target_transform: Optional[Callable] = None,
    download: bool = False,
    n_frames: int = DVS_GESTURE_FRAMES,
    size: int = DVS_SIZE,
    split_by: str = "number",
    cache_dir: Optional[PathLike] = None,
):
    """``tonic.datasets.DVSGesture`` with the paper's frames: ``[20, 2, 48, 48]`` float32.

    Samples are listed in natural path order.  See the module doc for the file layout.
    """
    require("tonic", "load_dvs_gesture (DVS-Gesture)")
    from tonic.datasets import DVSGesture

    _check_transform(transform, cache_dir)
    root = os.fspath(expand_root(root))
    if transform == _PAPER:
        frames = _dvs_frames(n_frames, size, split_by, DVSGesture.sensor_size)
        if cache_dir is not None:
            ds = _construct(DVSGesture, root, train, download, transform=frames)
            _sort_samples(ds)
            tag = _param_tag(split="train" if train else "test", n=n_frames, size=size, by=split_by)
            return _cached(ds, cache_dir, "DVSGesture", tag, FramesToTensor(), target_transform)
        transform = _compose([frames, FramesToTensor()])
    ds = _construct(DVSGesture, root, train, download, transform=transform, target_transform=target_transform)
    _sort_samples(ds)
    return ds


def _require_aedat() -> None:
    require("aedat", "load_cifar10_dvs (tonic reads the .aedat4 recordings with aedat, which tonic does "
                     "not install)")


def cifar10_dvs_split(targets: Sequence[int], train: bool, split_ratio: float = 0.9) -> List[int]:
    """Indices of the train or test part: per class, the first ``round(split_ratio * n)`` samples train.

    With the full data set (1000 recordings per class, listed in natural file
    order) that is 900/100 per class, 9000/1000 in all, as in the OTTT code.
    """
    targets = np.asarray(targets)
    picked: List[int] = []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        n_train = int(round(split_ratio * len(idx)))
        picked.extend((idx[:n_train] if train else idx[n_train:]).tolist())
    return sorted(picked)


def frame_stats(dataset, indices: Optional[Sequence[int]] = None) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and std of frames ``[T, P, H, W]`` over the samples (all steps and pixels)."""
    indices = range(len(dataset)) if indices is None else indices
    total = total_sq = None
    count = 0
    for i in indices:
        x = np.asarray(dataset[i][0], dtype=np.float64)
        x = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
        s, sq = x.sum(axis=1), (x * x).sum(axis=1)
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += x.shape[1]
    if not count:
        raise ValueError("frame_stats needs at least one sample")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    std = np.where(std > 0, std, 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def load_cifar10_dvs(
    root: PathLike,
    train: bool = True,
    transform: Union[Callable, None, str] = _PAPER,
    target_transform: Optional[Callable] = None,
    download: bool = False,
    n_frames: int = CIFAR10_DVS_FRAMES,
    size: int = DVS_SIZE,
    split_by: str = "number",
    split_ratio: float = 0.9,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    stats_samples: Optional[int] = 1000,
    crop_padding: int = 4,
    cache_dir: Optional[PathLike] = None,
):
    """CIFAR10-DVS (``tonic.datasets.CIFAR10DVS``) split 9000/1000 with the paper's pipeline.

    Returns ``torch.utils.data.Subset`` of tonic's data set (whose samples are
    put in natural path order, so the split is deterministic).  With
    ``transform="paper"`` and no ``mean``/``std``, the per-polarity mean/std
    of the (un-augmented) training frames are computed from ``stats_samples``
    evenly spaced training recordings (None: all of them) and stored in
    ``<root>/CIFAR10DVS/opzo_frame_stats_<tag>.json`` for the next time.
    """
    from torch.utils.data import Subset

    require("tonic", "load_cifar10_dvs (CIFAR10-DVS)")
    from tonic.datasets import CIFAR10DVS

    _check_transform(transform, cache_dir)
    root = os.fspath(expand_root(root))
    _ensure_present(CIFAR10DVS, root, None, download)
    _require_aedat()

    if transform != _PAPER:
        ds = _construct(CIFAR10DVS, root, None, download, transform=transform, target_transform=target_transform)
        _sort_samples(ds)
        return Subset(ds, cifar10_dvs_split(ds.targets, train, split_ratio))

    frames = _dvs_frames(n_frames, size, split_by, CIFAR10DVS.sensor_size)
    ds = _construct(CIFAR10DVS, root, None, download, transform=frames)
    _sort_samples(ds)
    indices = cifar10_dvs_split(ds.targets, train, split_ratio)
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither")
    if mean is None:
        mean, std = _cifar10_dvs_stats(ds, root, n_frames, size, split_by, split_ratio, stats_samples)
    post = _cifar10_dvs_post(train, mean, std, size, crop_padding)
    if cache_dir is not None:
        tag = _param_tag(n=n_frames, size=size, by=split_by)
        full = _cached(ds, cache_dir, "CIFAR10DVS", tag, post, target_transform)
    else:
        ds.transform = _compose([frames, post])
        ds.target_transform = target_transform
        full = ds
    return Subset(full, indices)


def _cifar10_dvs_stats(ds, root, n_frames, size, split_by, split_ratio, stats_samples):
    train_idx = cifar10_dvs_split(ds.targets, True, split_ratio)
    if stats_samples is not None and stats_samples < len(train_idx):
        pick = np.linspace(0, len(train_idx) - 1, int(stats_samples)).round().astype(int)
        train_idx = [train_idx[i] for i in np.unique(pick)]
    tag = _param_tag(n=n_frames, size=size, by=split_by, ratio=split_ratio, k=len(train_idx), n_all=len(ds))
    path = os.path.join(ds.location_on_system, f"opzo_frame_stats_{tag}.json")
    try:
        with open(path) as f:
            saved = json.load(f)
        return tuple(saved["mean"]), tuple(saved["std"])
    except (OSError, ValueError, KeyError):
        pass
    mean, std = frame_stats(ds, train_idx)
    try:
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"mean": mean, "std": std, "samples": len(train_idx), "n_frames": n_frames,
                       "size": size, "split_by": split_by}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only data folder: recomputed next time
    return mean, std

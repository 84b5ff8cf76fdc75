"""ImageNet-1k (ILSVRC2012) for table 4: fine-tuning OTTT's NF-ResNet-34 under noise.

ImageNet cannot be downloaded by a library; its files must already be on disk in one of the two
usual layouts under ``root/imagenet`` (or ``root`` itself):

* ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``, one folder per class (read by
  ``torchvision.datasets.ImageFolder``; sorted folder names give the class indices, as in OTTT), or
* ``ILSVRC2012_img_train.tar``, ``ILSVRC2012_img_val.tar`` and ``ILSVRC2012_devkit_t12.tar.gz``
  (read by ``torchvision.datasets.ImageNet``, which unpacks them once).

Preprocessing as in the paper (appendix C.2): training images are randomly resized and cropped to
224x224 and flipped; test images are resized to 256 and center-cropped to 224; both normalised
with ImageNet's mean and standard deviation.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

from ._common import DatasetNotFoundError, PathLike, expand_root

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_transform(train: bool, size: int = 224) -> Callable:
    """The paper's preprocessing (``size`` 224; the resize before the test crop is ``size * 8 / 7``)."""
    from torchvision import transforms

    steps = [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip()] if train else \
        [transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size)]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def load_imagenet(root: PathLike, train: bool = True, transform: Optional[Callable] = None, size: int = 224):
    """ImageNet's ``train`` or ``val`` split from ``root/imagenet`` or ``root`` (see the module
    docstring for the layouts); ``transform`` defaults to :func:`imagenet_transform`."""
    from torchvision import datasets

    transform = transform or imagenet_transform(train, size)
    split = "train" if train else "val"
    candidates = [expand_root(root) / "imagenet", expand_root(root)]
    for folder in candidates:
        if (folder / split).is_dir() and any((folder / split).iterdir()):
            return datasets.ImageFolder(os.fspath(folder / split), transform=transform)
        if (folder / "ILSVRC2012_devkit_t12.tar.gz").is_file():
            return datasets.ImageNet(os.fspath(folder), split=split, transform=transform)
    raise DatasetNotFoundError(
        f"ImageNet ({split}) was not found under {candidates[0]} or {candidates[1]}. It cannot be downloaded "
        f"automatically: put the class folders in {candidates[0]}/{split}/<wnid>/*.JPEG (the usual "
        f"ImageFolder layout), or ILSVRC2012_img_{split}.tar and ILSVRC2012_devkit_t12.tar.gz in {candidates[0]}."
    )

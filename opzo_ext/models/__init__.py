"""The paper's networks, built from stock SpikingJelly modules (opzo_ext attaches to them exactly
as to a user's own model; nothing here knows about the training session).

* :func:`fc_2x800`: 784-800-800-10 MLP for (N-)MNIST
* :func:`conv5`, :func:`conv9`: 5- and 9-layer convolutional networks with scaled weight
  standardisation (CIFAR-10/100, DVS-CIFAR10, DVS-Gesture)
* :func:`nf_resnet18`, :func:`nf_resnet34`: OTTT's normalizer-free spiking ResNets (ImageNet)
* :func:`load_ottt_checkpoint`, :func:`load_state_dict_report`: load OTTT / SpikingJelly weights
  with a report of missing, unexpected and mismatched entries
"""
from .._optional import require

require("spikingjelly", "opzo_ext.models (the paper's networks, built from SpikingJelly modules)")

from .checkpoints import CheckpointError, LoadReport, load_ottt_checkpoint, load_state_dict_report
from .common import Scale, lif
from .conv import conv5, conv9, small_conv, spiking_convnet
from .fc import fc_2x800
from .nf_resnet import NFBasicBlock, NFResNet, nf_resnet18, nf_resnet34

__all__ = ["fc_2x800", "conv5", "conv9", "small_conv", "spiking_convnet", "nf_resnet18", "nf_resnet34", "NFResNet",
           "NFBasicBlock", "Scale", "lif", "load_ottt_checkpoint", "load_state_dict_report",
           "LoadReport", "CheckpointError"]

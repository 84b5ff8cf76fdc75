"""Training presets: the hyperparameters of appendix C.3.2 of the paper, one entry per data set.

Every value can be overridden on the command line (``opzo-train --set key=value``)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Preset:
    dataset: str  # name for opzo_ext.data.get_dataset
    model: str  # key of opzo_ext.cli.MODELS
    model_kwargs: dict = field(default_factory=dict)
    steps: int = 6  # T, time steps per sample
    frames: bool = False  # samples are event frames [T, C, H, W]; else a static image fed every step
    batch_size: int = 128
    epochs: int = 50
    lr: float = 2e-4  # AdamW, cosine annealing to 0
    zo_lr: float = 2e-4  # ZO's learning rate (the paper lowers it to 2e-5 on most sets)
    weight_decay: float = 2e-4
    dropout: float = 0.0  # not applied for ZO
    mse_weight: float = 0.05  # l of the OTTT loss (1 - l) CE + l MSE
    momentum: float = 0.99999  # lam of OPZO's M
    feedback_scale: str = "jacobian"  # what OPZO's feedback estimates (TrainConfig.feedback_scale)
    alpha_start: float = 0.2
    alpha_end: float = 0.01
    local_scale: float = 0.01
    finetune_lr: float = 2e-5  # opzo-finetune's AdamW learning rate (no weight decay)
    finetune_zo_lr: float = 2e-5
    finetune_epochs: int = 1  # opzo-finetune's default --epochs (imagenet: 5, table 4 of the paper)

    def with_overrides(self, **values: Any) -> "Preset":
        return replace(self, **values)


PRESETS: dict[str, Preset] = {
    "mnist": Preset("mnist", "fc_2x800", dict(in_features=784), dropout=0.2, zo_lr=2e-5),
    "fashion-mnist": Preset("fashion-mnist", "fc_2x800", dict(in_features=784), dropout=0.2, zo_lr=2e-5),
    "nmnist": Preset("nmnist", "fc_2x800", dict(in_features=2 * 34 * 34), steps=30, frames=True, dropout=0.2, mse_weight=0.001),
    "nmnist-sim": Preset("simulated_nmnist", "fc_2x800", dict(in_features=2 * 34 * 34), steps=30, frames=True, dropout=0.2,
                         mse_weight=0.001),
    "cifar10": Preset("cifar10", "conv5", dict(in_channels=3, num_classes=10), epochs=300, zo_lr=2e-5),
    "cifar100": Preset("cifar100", "conv5", dict(in_channels=3, num_classes=100), epochs=300, zo_lr=2e-5),
    "dvsgesture": Preset("dvsgesture", "conv5", dict(in_channels=2, num_classes=11, input_size=48), steps=20, frames=True,
                         batch_size=16, epochs=300, momentum=0.999999, mse_weight=0.001),
    # table 4: fine-tuning OTTT's NF-ResNet-34 (lr 2e-6, ZO 2e-7, no weight decay, batch 64)
    "imagenet": Preset("imagenet", "nf_resnet34", dict(num_classes=1000), batch_size=64, epochs=5, lr=2e-6,
                       zo_lr=2e-7, weight_decay=0.0, finetune_lr=2e-6, finetune_zo_lr=2e-7, finetune_epochs=5),
    "cifar10dvs": Preset("cifar10dvs", "conv5", dict(in_channels=2, num_classes=10, input_size=48), steps=10, frames=True,
                         epochs=300, dropout=0.1, zo_lr=2e-5, mse_weight=0.001),
}

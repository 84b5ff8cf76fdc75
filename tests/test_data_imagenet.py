"""ImageNet for table 4: the ImageFolder layout, the paper's preprocessing, a clear error without
the files, and the imagenet preset's fine-tuning settings."""
import numpy as np
import pytest
from PIL import Image

from opzo_ext import finetune
from opzo_ext.data import DatasetNotFoundError, get_dataset
from opzo_ext.data.imagenet import IMAGENET_MEAN
from opzo_ext.errors import OpzoError
from opzo_ext.presets import PRESETS


def write_image_folder(root, split, colours):
    """One class folder per colour, two solid-colour JPEGs each (300 x 260)."""
    for wnid, colour in colours.items():
        folder = root / "imagenet" / split / wnid
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((260, 300, 3), colour, dtype=np.uint8)).save(folder / f"{wnid}_{i}.JPEG")


def test_image_folder_layout_with_the_papers_preprocessing(tmp_path):
    colours = {"n01440764": (255, 0, 0), "n01443537": (124, 116, 104)}  # red; ImageNet's mean colour
    for split in ("train", "val"):
        write_image_folder(tmp_path, split, colours)
    train = get_dataset("imagenet", tmp_path, train=True)
    val = get_dataset("ILSVRC2012", tmp_path, train=False)
    assert len(train) == 4 and train.classes == sorted(colours)
    for data in (train, val):
        x, y = data[0]
        assert x.shape == (3, 224, 224) and y == 0
    red, _ = val[0]  # normalised per channel: (1 - mean) / std for red, -mean / std for the others
    assert red[0].mean().item() == pytest.approx((1 - IMAGENET_MEAN[0]) / 0.229, abs=0.05)
    assert red[1].mean().item() == pytest.approx(-IMAGENET_MEAN[1] / 0.224, abs=0.05)
    grey, label = val[2]
    assert label == 1 and grey.abs().mean().item() < 0.05  # the mean colour maps to about 0


def test_missing_imagenet_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cannot be downloaded.*imagenet/val/<wnid>/\*\.JPEG"):
        get_dataset("imagenet", tmp_path, train=False)


def test_imagenet_preset_and_finetune_defaults_follow_the_paper(tmp_path):
    preset = PRESETS["imagenet"]
    assert (preset.model, preset.model_kwargs, preset.batch_size, preset.steps) == ("nf_resnet34", {"num_classes": 1000}, 64, 6)
    for method, lr in (("opzo", 2e-6), ("zo", 2e-7)):
        args = finetune.parser().parse_args(["--checkpoint", str(tmp_path / "missing.pt"), "--preset", "imagenet",
                                             "--sigma", "0.1", "--method", method, "--device", "cpu"])
        with pytest.raises((OpzoError, FileNotFoundError)):
            finetune.run(args)  # stops at the missing checkpoint, after settling the learning rate
        assert args.lr == lr
    assert finetune.parser().parse_args(["--checkpoint", "x", "--preset", "mnist", "--sigma", "1", "--method", "opzo",
                                         "--lr", "1e-4"]).lr == 1e-4

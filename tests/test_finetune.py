"""opzo-finetune on a tiny real-MNIST checkpoint: the three accuracies, and clean errors."""
import json

import pytest
import torch

from opzo_ext import cli, finetune
from opzo_ext.presets import PRESETS

TINY = ["--limit-test-batches", "2"]


def test_finetune_reports_clean_noisy_before_and_after(tmp_path, capsys):
    out = tmp_path / "pre"
    assert cli.main(["--preset", "mnist", "--method", "bp", "--epochs", "1", "--limit-batches", "20", "--quiet",
                     "--set", "steps=2", "--out", str(out), *TINY]) == 0
    results = tmp_path / "ft.jsonl"
    for method, storage in (("opzo", ["--feedback-matrix", "lowrank", "--feedback-rank", "2"]), ("dfa", [])):
        code = finetune.main(["--checkpoint", str(out / "checkpoint.pt"), "--preset", "mnist", "--sigma", "2.0",
                              "--method", method, "--limit-batches", "2", "--json", str(results), *storage, *TINY])
        assert code == 0
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["method"], r["feedback_matrix"]) for r in lines] == [("opzo", "lowrank"), ("dfa", "dense")]
    assert [r["feedback_layout"] for r in lines] == ["lowrank", "dense"]  # what was used, recorded
    for r in lines:
        assert 0 <= r["noisy_acc_before"] <= 1 and 0 <= r["noisy_acc_after"] <= 1
        assert r["clean_acc"] > 0.5  # the checkpoint was really loaded (chance is 0.1)
    assert lines[0]["clean_acc"] == lines[1]["clean_acc"]  # same checkpoint, same clean accuracy
    assert "noisy (sigma=2.0) before" in capsys.readouterr().out


def test_readout_only_trains_the_readout_and_nothing_else(tmp_path, capsys):
    out = tmp_path / "pre"
    assert cli.main(["--preset", "mnist", "--method", "bp", "--epochs", "1", "--limit-batches", "5", "--quiet",
                     "--set", "steps=2", "--out", str(out), *TINY]) == 0
    before = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    results, saved = tmp_path / "ft.jsonl", tmp_path / "tuned.pt"
    code = finetune.main(["--checkpoint", str(out / "checkpoint.pt"), "--preset", "mnist", "--sigma", "2.0",
                          "--readout-only", "--lr", "1e-3", "--train-samples", "256", "--limit-batches", "2",
                          "--json", str(results), "--save", str(saved), *TINY])
    assert code == 0
    after = torch.load(saved, weights_only=True)
    assert after.keys() == before.keys()
    for name, value in before.items():
        if name.startswith("fc3."):  # the readout of fc_2x800
            assert not torch.equal(after[name], value), name
        else:
            assert torch.equal(after[name], value), name  # bit-identical
    r = json.loads(results.read_text())
    assert r["readout_only"] is True and r["method"] == "bp" and r["readout"] == "fc3"
    printed = capsys.readouterr().out
    assert "after readout-only fine-tuning" in printed and "| clean after" in printed
    # a method other than bp makes no sense for the control
    assert finetune.main(["--checkpoint", str(out / "checkpoint.pt"), "--preset", "mnist", "--sigma", "2.0",
                          "--readout-only", "--method", "opzo", *TINY]) == 2


def test_finetune_refuses_a_checkpoint_that_does_not_fit(tmp_path, capsys):
    path = tmp_path / "bad.pt"
    torch.save({"net": {"fc1.weight": torch.zeros(3, 3)}}, path)
    code = finetune.main(["--checkpoint", str(path), "--preset", "mnist", "--sigma", "0.1", "--method", "opzo"])
    assert code == 2
    err = capsys.readouterr().err
    assert "fc1.weight" in err and "missing" in err.lower()
    assert "Pass --non-strict" in err and "strict=False" not in err  # the command's flag


def test_finetune_refuses_a_storage_the_method_has_no_use_for(tmp_path, capsys):
    path = tmp_path / "any.pt"
    torch.save({}, path)
    code = finetune.main(["--checkpoint", str(path), "--preset", "mnist", "--sigma", "0.1", "--method", "dfa",
                          "--feedback-matrix", "bf16", *TINY])
    assert code == 2
    assert "feedback_matrix='bf16'" in capsys.readouterr().err


def test_finetune_shows_progress_and_defaults_to_the_presets_epochs(tmp_path, capsys, monkeypatch):
    out = tmp_path / "pre"
    assert cli.main(["--preset", "mnist", "--method", "bp", "--epochs", "1", "--limit-batches", "2", "--quiet",
                     "--set", "steps=2", "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    results = tmp_path / "ft.jsonl"
    base = ["--checkpoint", str(out / "checkpoint.pt"), "--preset", "mnist", "--sigma", "1.0", "--method", "opzo",
            "--limit-batches", "2", "--json", str(results), *TINY]
    assert finetune.main(base) == 0
    err = capsys.readouterr().err
    assert "opzo fine-tuning epoch 1/1" in err and "loss=" in err  # the progress bar
    assert json.loads(results.read_text())["epochs"] == 1  # mnist's default
    assert finetune.main([*base, "--quiet"]) == 0
    assert "fine-tuning epoch" not in capsys.readouterr().err
    # table 4 fine-tunes 5 epochs; --help says which default applies
    assert PRESETS["imagenet"].finetune_epochs == 5 and PRESETS["mnist"].finetune_epochs == 1
    assert "5 for imagenet" in " ".join(finetune.parser().format_help().split())
    # --download reaches the loaders
    seen = []

    def fake(name, root, train=True, download=None, **kwargs):
        seen.append(download)
        raise RuntimeError("no data here. Pass download=True to let tonic download it")

    monkeypatch.setattr(cli, "get_dataset", fake)
    assert finetune.main([*base, "--quiet", "--download"]) == 2
    assert seen == [True]
    assert "Pass --download" in capsys.readouterr().err


def test_finetune_refuses_bad_values_cleanly(tmp_path, capsys):
    path = tmp_path / "any.pt"
    torch.save({}, path)
    base = ["--checkpoint", str(path), "--preset", "mnist", "--sigma", "0.1", "--method", "opzo"]
    assert finetune.main([*base, "--device", "cdua"]) == 2
    assert "opzo-finetune: error: --device 'cdua'" in capsys.readouterr().err
    for bad in (["--epochs", "0"], ["--limit-batches", "-1"]):
        with pytest.raises(SystemExit):
            finetune.main([*base, *bad])
        assert "must be at least 1" in capsys.readouterr().err


def test_an_nf_resnet_is_fine_tuned_with_noise_after_every_convolution(tmp_path, monkeypatch, capsys):
    """Table 4's site: for the NF-ResNets the noise and OPZO's perturbation go after every
    convolution (``--noise-site conv`` by default); the blocks' scalar skip gains stay fixed for
    every method, and every other parameter moves."""
    from torch.utils.data import TensorDataset

    from opzo_ext.models import nf_resnet18

    torch.manual_seed(0)
    images = TensorDataset(torch.rand(8, 3, 16, 16) * 20, torch.randint(0, 1000, (8,)))  # bright: every layer spikes
    monkeypatch.setattr(finetune, "load_dataset", lambda preset, args, train: images)
    model = nf_resnet18(num_classes=1000)
    for block in model.modules():  # a trained net's skip gains and readout are not 0, as they start
        if hasattr(block, "skipinit_gain"):
            block.skipinit_gain.data.fill_(1.0)
    torch.nn.init.normal_(model.fc.weight, std=0.01)
    checkpoint, results = tmp_path / "nf.pt", tmp_path / "ft.jsonl"
    torch.save(model.state_dict(), checkpoint)
    base = ["--checkpoint", str(checkpoint), "--preset", "imagenet", "--model", "nf_resnet18", "--sigma", "0.1",
            "--epochs", "1", "--limit-batches", "1", "--lr", "1e-3", "--quiet", "--json", str(results)]
    for method in ("opzo", "bp"):
        saved = tmp_path / f"{method}.pt"
        assert finetune.main([*base, "--method", method, "--save", str(saved), "--feedback-scale", "corrected"]) == 0
        after = torch.load(saved, weights_only=True)
        for name, value in model.state_dict().items():
            if name.endswith("skipinit_gain"):
                assert torch.equal(after[name], value), name
        assert not torch.equal(after["conv1.weight"], model.conv1.weight)  # the stem learns
        assert not torch.equal(after["layer4.1.conv2.bias"], model.layer4[1].conv2.bias)  # so does the last conv
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["noise_site"] for r in lines] == ["conv", "conv"]
    assert len(lines[0]["frozen"]) == 8 and all(n.endswith("skipinit_gain") for n in lines[0]["frozen"])
    # the FC presets keep the neuron site, and a conv site without convolutions is refused
    fc = tmp_path / "fc.pt"
    torch.save(cli.MODELS["fc_2x800"](in_features=784).state_dict(), fc)
    code = finetune.main(["--checkpoint", str(fc), "--preset", "mnist", "--sigma", "0.1", "--method", "opzo",
                          "--noise-site", "conv", *TINY])
    assert code == 2 and "has no convolution; use --noise-site neuron" in capsys.readouterr().err

"""opzo-finetune on a tiny real-MNIST checkpoint: the three accuracies, and clean errors."""
import json

import torch

from opzo_ext import cli, finetune

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
    assert [(r["method"], r["feedback_matrix"]) for r in lines] == [("opzo", "lowrank"), ("dfa", "auto")]
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


def test_finetune_refuses_a_storage_the_method_has_no_use_for(tmp_path, capsys):
    path = tmp_path / "any.pt"
    torch.save({}, path)
    code = finetune.main(["--checkpoint", str(path), "--preset", "mnist", "--sigma", "0.1", "--method", "dfa",
                          "--feedback-matrix", "bf16", *TINY])
    assert code == 2
    assert "feedback_matrix='bf16'" in capsys.readouterr().err

"""opzo-train: a tiny real-MNIST run, bit-exact resume, and clean errors."""
import json

import pytest
import torch

from opzo_ext import cli

TINY = ["--preset", "mnist", "--limit-batches", "3", "--limit-test-batches", "2", "--quiet",
        "--set", "batch_size=32", "--set", "steps=2"]


def run(tmp_path, name, *extra):
    out = tmp_path / name
    assert cli.main([*TINY, "--out", str(out), *extra]) == 0
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return lines, torch.load(out / "checkpoint.pt", weights_only=True)


@pytest.mark.parametrize("method,local", [("opzo", False), ("dkp", True)])
def test_resume_continues_bit_exactly(tmp_path, method, local):
    flags = ["--method", method] + (["--local"] if local else [])
    straight, end = run(tmp_path, "straight", *flags, "--epochs", "3")
    run(tmp_path, "resumed", *flags, "--epochs", "3", "--stop-after", "1")
    resumed, end2 = run(tmp_path, "resumed", *flags, "--epochs", "3", "--resume")
    assert [r["epoch"] for r in resumed] == [0, 1, 2]
    for a, b in zip(straight, resumed):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for key, value in end["model"].items():
        assert torch.equal(value, end2["model"][key]), key
    for key, value in end["session"]["feedback"]["matrices"].items():
        assert torch.equal(value, end2["session"]["feedback"]["matrices"][key]), key
    if local:
        assert end["session"]["local"] and all(
            torch.equal(v, end2["session"]["local"][k]) for k, v in end["session"]["local"].items())


@pytest.mark.parametrize("storage", [["--feedback-matrix", "bf16"], ["--feedback-matrix", "lowrank", "--feedback-rank", "3"]])
def test_feedback_storage_from_the_command_line_resumes_bit_exactly(tmp_path, storage):
    flags = ["--method", "opzo", "--epochs", "2", *storage]
    _, end = run(tmp_path, "straight", *flags)
    run(tmp_path, "resumed", *flags, "--stop-after", "1")
    _, end2 = run(tmp_path, "resumed", *flags, "--resume")
    for key, value in end["session"]["feedback"]["matrices"].items():
        parts, parts2 = (v if isinstance(v, tuple) else (v,) for v in (value, end2["session"]["feedback"]["matrices"][key]))
        assert all(torch.equal(a, b) for a, b in zip(parts, parts2, strict=True)), key
        if storage[1] == "bf16":
            assert value.dtype == torch.bfloat16
        else:  # factors A [n, k], B [m, k] with k <= 3
            assert len(value) == 2 and value[0].shape[1] == 3 and value[1].shape == (10, 3)
    assert all(torch.equal(v, end2["model"][k]) for k, v in end["model"].items())


def test_errors_are_clean(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["--preset", "nope", "--method", "opzo"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--preset", "mnist", "--method", "sgd"])
    assert "invalid choice: 'sgd'" in capsys.readouterr().err
    assert cli.main([*TINY, "--method", "opzo", "--out", str(tmp_path / "x"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert cli.main([*TINY, "--method", "opzo", "--set", "colour=red"]) == 2
    assert "unknown preset field 'colour'" in capsys.readouterr().err


def test_missing_data_is_a_clean_error(tmp_path, capsys):
    code = cli.main(["--preset", "cifar10", "--method", "opzo", "--data-root", str(tmp_path), "--quiet",
                     "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "preset 'cifar10'" in err and "download=True" in err

"""opzo-train: a tiny real-MNIST run, bit-exact resume, and clean errors."""
import json
import math

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
    # the advice names the command's flag, not the loader's keyword argument
    assert "preset 'cifar10'" in err and "Pass --download" in err and "download=True" not in err


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def same_records(a, b):
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    return strip(a) == strip(b)


def test_the_run_folder_is_printed_and_a_rerun_never_writes_over_it(tmp_path, capsys):
    out = tmp_path / "run"
    flags = [*TINY, "--method", "opzo", "--epochs", "1", "--out", str(out)]
    assert cli.main(flags) == 0
    assert f"writing {out}/checkpoint.pt and {out}/results.jsonl" in capsys.readouterr().out
    before = (out / "results.jsonl").read_bytes(), (out / "checkpoint.pt").read_bytes()
    assert cli.main(flags) == 2  # not appended to, not replaced
    err = capsys.readouterr().err
    assert err.startswith("opzo-train: error:") and "already holds a run" in err
    assert "--resume" in err and "--out" in err and "--overwrite" in err
    assert ((out / "results.jsonl").read_bytes(), (out / "checkpoint.pt").read_bytes()) == before
    assert cli.main([*flags, "--overwrite"]) == 0  # starts again: one line, not two
    assert [r["epoch"] for r in records(out)] == [0]
    assert cli.main([*flags, "--overwrite", "--resume"]) == 2
    assert "pass one of them" in capsys.readouterr().err


def test_resume_with_more_epochs_follows_the_new_schedule(tmp_path, capsys):
    out = tmp_path / "run"
    flags = [*TINY, "--method", "opzo", "--out", str(out)]
    assert cli.main([*flags, "--epochs", "2"]) == 0
    two = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert cli.main([*flags, "--epochs", "4", "--resume", "--stop-after", "3"]) == 0
    assert "schedule now spans --epochs 4" in capsys.readouterr().out
    three = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    # the third epoch trains at the new schedule's lr (2e-4 / 2), not at the old one's end (0.0)
    assert any(not torch.equal(two[k], three[k]) for k in two)
    assert cli.main([*flags, "--epochs", "4", "--resume"]) == 0
    lrs = [r["lr"] for r in records(out)]  # the lr after each epoch's scheduler step
    assert [r["epoch"] for r in records(out)] == [0, 1, 2, 3]
    assert lrs[2] == pytest.approx(2e-4 * (1 + math.cos(math.pi * 3 / 4)) / 2) and lrs[3] == pytest.approx(0.0)


def test_resuming_a_finished_run_says_so(tmp_path, capsys):
    out = tmp_path / "run"
    flags = [*TINY, "--method", "opzo", "--epochs", "1", "--out", str(out)]
    assert cli.main(flags) == 0
    capsys.readouterr()
    assert cli.main([*flags, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "already trained 1 epoch(s)" in printed and "nothing to train" in printed and "--epochs" in printed


@pytest.mark.parametrize("bad,message", [
    (["--stop-after", "-1"], "argument --stop-after: -1 must be at least 1"),
    (["--epochs", "0"], "argument --epochs: 0 must be at least 1"),
    (["--limit-batches", "0"], "argument --limit-batches: 0 must be at least 1"),
    (["--train-samples", "abc"], "argument --train-samples: 'abc' is not an integer"),
])
def test_bad_counts_are_argparse_errors(tmp_path, capsys, bad, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main([*TINY, "--method", "opzo", "--out", str(tmp_path / "x"), *bad])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "opzo-train: error: " in err and message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad,message", [
    (["--set", "batch_size=abc"], "batch_size takes an integer, e.g. --set batch_size=64"),
    (["--set", "steps=0"], "steps must be at least 1"),
    (["--set", "frames=maybe"], "frames takes true or false"),
    (["--set", "lr=fast"], "lr takes a number"),
    (["--set", "lr"], "expected KEY=VALUE"),
    (["--set", "feedback_scale=huge"], "feedback_scale takes one of"),
    (["--device", "cdua"], "--device 'cdua' is not a device name"),
])
def test_bad_values_are_clean_errors(tmp_path, capsys, bad, message):
    assert cli.main([*TINY, "--method", "opzo", "--out", str(tmp_path / "x"), *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("opzo-train: error: ") and message in err, err


def test_set_is_typed_by_the_preset_fields():
    def preset(*items):
        return cli._preset(cli.parser().parse_args(["--preset", "nmnist", "--method", "opzo",
                                                    *[a for i in items for a in ("--set", i)]]))

    assert preset("frames=False").frames is False and preset("frames=no").frames is False
    assert preset("frames=true").frames is True
    p = preset("batch_size=64", "lr=1e-3", "feedback_scale=paper")
    assert (p.batch_size, p.lr, p.feedback_scale) == (64, 1e-3, "paper")
    assert cli._convert("x", "1, 2", tuple[int, ...]) == (1, 2)


def test_an_unwritable_out_is_refused_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(cli, "get_dataset", lambda *a, **k: pytest.fail("data read before --out was checked"))
    assert cli.main([*TINY, "--method", "opzo", "--out", str(tmp_path / "file" / "run")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the run folder" in err and "another --out" in err


def test_session_options_are_checked_before_the_run_folder_or_the_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "get_dataset", lambda *a, **k: pytest.fail("data read before the options were checked"))
    out = tmp_path / "run"
    assert cli.main([*TINY, "--method", "none", "--out", str(out)]) == 2  # method 'none' needs --local
    err = capsys.readouterr().err
    assert "method='none'" in err and "pass local=True" in err
    assert not out.exists()


class Interrupt(BaseException):
    pass


def test_an_interruption_while_saving_never_trains_an_epoch_twice(tmp_path, monkeypatch):
    flags = ["--method", "opzo", "--epochs", "3"]
    straight, _ = run(tmp_path, "straight", *flags)
    save, calls = torch.save, []

    def failing_save(obj, path, *a, **k):  # killed while writing the second checkpoint
        calls.append(path)
        if len(calls) == 2:
            raise Interrupt
        return save(obj, path, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(Interrupt):
        cli.main([*TINY, *flags, "--out", str(tmp_path / "resumed")])
    monkeypatch.setattr(torch, "save", save)
    assert not list((tmp_path / "resumed").glob("*.tmp*"))  # no half-written file left
    resumed, _ = run(tmp_path, "resumed", *flags, "--resume")
    assert [r["epoch"] for r in resumed] == [0, 1, 2]
    assert same_records(straight, resumed)


def test_a_result_line_lost_after_the_checkpoint_comes_back_on_resume(tmp_path, monkeypatch):
    flags = ["--method", "opzo", "--epochs", "3"]
    straight, _ = run(tmp_path, "straight", *flags)
    append, calls = cli._append_record, []

    def failing_append(path, record):  # killed after the second checkpoint, before its line
        calls.append(record)
        if len(calls) == 2:
            raise Interrupt
        append(path, record)

    monkeypatch.setattr(cli, "_append_record", failing_append)
    with pytest.raises(Interrupt):
        cli.main([*TINY, *flags, "--out", str(tmp_path / "resumed")])
    monkeypatch.setattr(cli, "_append_record", append)
    assert [r["epoch"] for r in records(tmp_path / "resumed")] == [0]
    resumed, _ = run(tmp_path, "resumed", *flags, "--resume")
    assert same_records(straight, resumed)


def test_broken_or_foreign_checkpoints_are_clean_errors(tmp_path, capsys):
    out = tmp_path / "run"
    flags = [*TINY, "--method", "opzo", "--out", str(out), "--resume", "--epochs", "2"]
    assert cli.main([*TINY, "--method", "opzo", "--out", str(out), "--epochs", "2", "--stop-after", "1"]) == 0
    good = (out / "checkpoint.pt").read_bytes()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    capsys.readouterr()

    (out / "checkpoint.pt").write_bytes(good[: len(good) // 2])  # truncated
    assert cli.main(flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("opzo-train: error: --resume: cannot read") and "truncated" in err and "--overwrite" in err

    torch.save(state["model"], out / "checkpoint.pt")  # a plain state dict (e.g. opzo-finetune --save)
    assert cli.main(flags) == 2
    assert "is not an opzo-train checkpoint" in capsys.readouterr().err

    other = dict(state, model={k: v[:5] if k.startswith("fc1.") else v for k, v in state["model"].items()})
    torch.save(other, out / "checkpoint.pt")  # another model's weights
    assert cli.main(flags) == 2
    err = capsys.readouterr().err
    assert "does not fit this run" in err and "Traceback" not in err

    (out / "checkpoint.pt").write_bytes(good)
    assert cli.main([*flags, "--local"]) == 2
    assert "was trained without --local; drop --local" in capsys.readouterr().err
    assert cli.main([*flags, "--feedback-matrix", "bf16"]) == 2
    assert "--feedback-matrix auto" in capsys.readouterr().err
    assert cli.main(flags) == 0  # the intact checkpoint still resumes


def test_the_cuda_rng_state_is_saved_and_restored(tmp_path, monkeypatch):
    restored = []
    fake = [torch.arange(16, dtype=torch.uint8)]
    monkeypatch.setattr(cli, "_has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: fake)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    flags = ["--method", "opzo", "--epochs", "2", "--device", "cpu"]
    _, state = run(tmp_path, "run", *flags, "--stop-after", "1")
    assert torch.equal(state["cuda_rng"][0], fake[0])
    run(tmp_path, "run", *flags, "--resume")
    assert len(restored) == 1 and torch.equal(restored[0][0], fake[0])


def test_download_is_passed_to_the_loaders_only_when_asked(tmp_path, monkeypatch):
    seen = []

    def fake(name, root, train=True, download=None, **kwargs):
        seen.append(download)
        raise RuntimeError("stop here")

    monkeypatch.setattr(cli, "get_dataset", fake)
    base = [*TINY, "--method", "opzo"]
    assert cli.main([*base, "--out", str(tmp_path / "a")]) == 2
    assert cli.main([*base, "--out", str(tmp_path / "b"), "--download"]) == 2
    assert seen == [False, True]


def test_sigterm_stops_cleanly_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    import os
    import signal

    train_epoch, calls = cli._train_epoch, []

    def killed_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_epoch(*args, **kwargs)

    monkeypatch.setattr(cli, "_train_epoch", killed_in_second_epoch)
    previous = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    assert cli.main([*TINY, "--method", "opzo", "--epochs", "2", "--out", str(out)]) == 130
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    assert "interrupted" in capsys.readouterr().err
    assert [r["epoch"] for r in records(out)] == [0]
    monkeypatch.setattr(cli, "_train_epoch", train_epoch)
    assert cli.main([*TINY, "--method", "opzo", "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert [r["epoch"] for r in records(out)] == [0, 1]


def test_simulated_nmnist_simulates_only_the_samples_used(tmp_path, capsys):
    from opzo_ext.data import find_offline_mnist_pickle
    from pathlib import Path

    raw = Path(__file__).resolve().parents[1] / "data" / "MNIST"
    if not raw.is_dir() and find_offline_mnist_pickle() is None:
        pytest.skip("no MNIST on this machine")
    root = tmp_path / "data"
    root.mkdir()
    if raw.is_dir():
        (root / "MNIST").symlink_to(raw)
    assert cli.main(["--preset", "nmnist-sim", "--method", "bp", "--epochs", "1", "--train-samples", "24",
                     "--limit-test-batches", "1", "--set", "batch_size=16", "--set", "steps=2", "--data-root",
                     str(root), "--out", str(tmp_path / "run")]) == 0
    cache = sorted(p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in (root / "SimulatedNMNIST").iterdir())
    assert cache == ["test_16", "train_24"]  # not the 60000 + 10000 samples
    assert "[SimulatedNMNIST] 24/24 samples" in capsys.readouterr().out  # progress of the simulation

"""``opzo-train``: train one of the paper's workloads with any credit-assignment method.

    opzo-train --preset mnist --method opzo --epochs 5
    opzo-train --preset cifar10 --method dfa --local --set batch_size=64 --device cuda
    opzo-train --preset mnist --method opzo --epochs 10 --resume      # continue bit-exactly

Files go to the run folder OUT (``--out``, default ``runs/PRESET-METHOD[-local]``), printed at the
start. After each epoch ``OUT/checkpoint.pt`` is written (model, optimizer, scheduler, session
state with M, RNG; atomically), then one JSON line is appended to ``OUT/results.jsonl``.
``--resume`` continues from the checkpoint; a folder that already holds a run is never written
over without ``--resume`` (continue it) or ``--overwrite`` (start again).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
import typing
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Subset

from . import models  # needs opzo_ext[spikingjelly], and says so
from ._optional import require
from .config import FEEDBACK_MATRICES, FEEDBACK_SCALES, METHOD_NAMES, TrainConfig
from .data import get_dataset  # needs opzo_ext[data], and says so
from .errors import OpzoError
from .losses import instantaneous_loss
from .noise import linear_alpha
from .presets import PRESETS, Preset
from .session import train as opzo_train


MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "fc_2x800": models.fc_2x800, "conv5": models.conv5, "conv9": models.conv9,
    "nf_resnet18": models.nf_resnet18, "nf_resnet34": models.nf_resnet34,
}

RESULTS, CHECKPOINT = "results.jsonl", "checkpoint.pt"
_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "session", "rng", "epoch", "preset", "method")


def _reset(model: torch.nn.Module) -> None:
    from spikingjelly.activation_based import functional

    functional.reset_net(model)


def _step_inputs(x: torch.Tensor, preset: Preset):
    """Per-step inputs: event frames ``[B, T, ...]`` are split along T; a static image is the same
    real-valued input current at every step (direct encoding)."""
    if preset.frames:
        return [x[:, t] for t in range(preset.steps)]
    return [x] * preset.steps


@torch.no_grad()
def evaluate(model, loader, preset: Preset, device: str, limit: Optional[int] = None) -> float:
    model.eval()
    correct = seen = 0
    for b, (x, y) in enumerate(loader):
        if limit is not None and b >= limit:
            break
        x, y = x.to(device), y.to(device)
        _reset(model)
        total = sum(model(x_t) for x_t in _step_inputs(x, preset))
        correct += (total.argmax(1) == y).sum().item()
        seen += len(y)
    _reset(model)
    return correct / max(seen, 1)


# -- shared by opzo-train, opzo-finetune and opzo-report -----------------------------------------

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a bad value ends as ``PROG: error: argument --X: ...``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def check_device(device: str) -> str:
    """``device`` if this machine can allocate on it, else :class:`OpzoError` saying what it has."""
    have = "cpu" + (f", cuda (cuda:0 to cuda:{torch.cuda.device_count() - 1})" if torch.cuda.is_available() else
                    " (no CUDA device on this machine)")
    try:
        torch.device(device)
    except (RuntimeError, ValueError):
        raise OpzoError(f"--device {device!r} is not a device name (e.g. cpu, cuda, cuda:1); this machine "
                        f"has: {have}.") from None
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, ValueError, NotImplementedError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        raise OpzoError(f"--device {device!r} is not usable here ({reason}); this machine has: {have}.") from None
    return device


def data_advice(message: str) -> str:
    """A data set error's advice worded for the command line: ``--download`` instead of the
    loaders' ``download=True`` (ImageNet is never downloaded, its message says so)."""
    for old, new in (("Pass download=True to let", "Pass --download to let"),
                     ("(download=True)", "(--download)"),
                     ("download=True", "--download"),
                     ("and download=False", "and --download was not given")):
        message = message.replace(old, new)
    return message


def load_dataset(preset: Preset, args, train: bool, **kwargs):
    """``get_dataset`` for a command: ``--download`` passed on; a missing data set is an
    :class:`OpzoError` whose advice names the command's flags. The simulated N-MNIST simulates only
    the samples the command reads (``--train-samples``; the first ``--limit-test-batches`` batches of
    the unshuffled test set), with progress unless ``--quiet``."""
    if preset.dataset == "simulated_nmnist":
        kwargs.setdefault("verbose", not args.quiet)
        if train and args.train_samples:
            kwargs.setdefault("num_samples", min(args.train_samples, 60000))
        if not train and args.limit_test_batches:
            kwargs.setdefault("num_samples", min(args.limit_test_batches * preset.batch_size, 10000))
    try:
        return get_dataset(preset.dataset, args.data_root, train=train, download=bool(args.download), **kwargs)
    except (FileNotFoundError, RuntimeError, ValueError) as exc:
        raise OpzoError(f"the data of preset {args.preset!r} is not available under {args.data_root!r}: "
                        f"{data_advice(str(exc))}") from exc


def add_download_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--download", action="store_true",
                   help="let torchvision/tonic download a data set missing under --data-root (off by default; "
                        "MNIST and Fashion-MNIST come from their offline copies first, ImageNet is never downloaded)")


# -- opzo-train ----------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> list[dict]:
    """Train as ``args`` says; returns the JSON records of the epochs run."""
    preset = _preset(args)
    check_device(args.device)
    config = TrainConfig(  # the session's options, checked before the run folder or the data is touched
        method=args.method, alpha=linear_alpha(preset.alpha_start, preset.alpha_end, preset.epochs),
        momentum=preset.momentum, feedback_scale=preset.feedback_scale, local=preset.local_scale if args.local else False,
        seed=args.seed, feedback_matrix=args.feedback_matrix, feedback_rank=args.feedback_rank)
    out = Path(args.out)
    checkpoint, results = out / CHECKPOINT, out / RESULTS
    _prepare_out(out, args)
    state = _read_checkpoint(checkpoint, args) if args.resume else None
    stop = preset.epochs if args.stop_after is None else min(args.stop_after, preset.epochs)
    if state is not None:
        done = state["epoch"] + 1
        records = _reconcile_results(results, state)
        if done >= stop:
            why = (f"--stop-after {args.stop_after}" if stop < preset.epochs else
                   f"all {preset.epochs} epochs of the schedule (--epochs)")
            print(f"opzo-train: {checkpoint} has already trained {done} epoch(s), {why}; nothing to train. "
                  f"Pass a larger --epochs (or --stop-after) with --resume to train further.", flush=True)
            return []
        print(f"opzo-train: continuing {out} ({checkpoint.name}, {results.name}) at epoch {done + 1} of "
              f"{preset.epochs}", flush=True)
    else:
        print(f"opzo-train: writing {out}/{CHECKPOINT} and {out}/{RESULTS}", flush=True)

    train_set = load_dataset(preset, args, train=True)
    test_set = load_dataset(preset, args, train=False)
    if args.train_samples:
        train_set = Subset(train_set, range(min(args.train_samples, len(train_set))))

    torch.manual_seed(args.seed)
    kwargs = dict(preset.model_kwargs)
    kwargs["dropout"] = 0.0 if args.method == "zo" else preset.dropout
    model = MODELS[preset.model](**kwargs).to(args.device)
    lr = preset.zo_lr if args.method == "zo" else preset.lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=preset.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=preset.epochs)
    example = _step_inputs(train_set[0][0][None].to(args.device), preset)[0]
    # attached at once: the local readouts must be in the optimizer before its state is loaded
    session = opzo_train(model, config=config, optimizer=optimizer, example_input=example)
    start = 0
    records = records if state is not None else []
    ran = []
    with session:
        if state is not None:
            _restore(state, checkpoint, model, session, optimizer, scheduler, preset)
            start = state["epoch"] + 1
        elif args.overwrite:
            for path in (checkpoint, results):
                path.unlink(missing_ok=True)
        test_loader = DataLoader(test_set, batch_size=preset.batch_size, shuffle=False)
        for epoch in range(start, stop):
            session.epoch = epoch
            order = torch.Generator().manual_seed(args.seed * 1000 + epoch)  # reproducible, resumable order
            loader = DataLoader(train_set, batch_size=preset.batch_size, shuffle=True, generator=order)
            record = _train_epoch(model, session, optimizer, loader, preset, args, epoch)
            record["test_acc"] = evaluate(model, test_loader, preset, args.device, args.limit_test_batches)
            scheduler.step()
            record.update(preset=args.preset, method=args.method, local=bool(args.local), epoch=epoch,
                          lr=optimizer.param_groups[0]["lr"])
            records.append(record)
            ran.append(record)
            # the checkpoint first (atomically), then the line: an interruption in between leaves a
            # checkpoint whose record --resume writes back, never an epoch trained twice
            save_atomically({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "session": session.state_dict(),
                "rng": torch.get_rng_state(), "cuda_rng": _cuda_rng_state(), "epoch": epoch,
                "epochs": preset.epochs, "preset": args.preset, "method": args.method, "local": bool(args.local),
                "feedback_matrix": args.feedback_matrix, "records": records}, checkpoint)
            _append_record(results, record)
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:.2f}% "
                  f"| test acc {100 * record['test_acc']:.2f}% ({record['seconds']:.0f} s)", flush=True)
    return ran


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then ``os.replace``: ``path`` is always
    either the old file or the complete new one, and the temporary file never stays behind."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_atomically(obj, path: Path) -> None:
    """``torch.save(obj, path)``, atomically (:func:`replace_atomically`)."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def _append_record(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _has_cuda() -> bool:
    return torch.cuda.is_available()


def _cuda_rng_state() -> Optional[list]:
    """Every CUDA device's RNG state (dropout and noise on the GPU draw from it), None without CUDA."""
    return torch.cuda.get_rng_state_all() if _has_cuda() else None


def _prepare_out(out: Path, args) -> None:
    """Make the run folder and check, before any data is read, that the run may write there."""
    if args.resume and args.overwrite:
        raise OpzoError("--resume continues the run in --out, --overwrite starts it again; pass one of them.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OpzoError(f"--out {out}: cannot create the run folder ({exc}); choose another --out.") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OpzoError(f"--out {out}: the run folder is not writable; choose another --out.")
    existing = [name for name in (CHECKPOINT, RESULTS) if (out / name).exists()]
    if args.resume:
        if not (out / CHECKPOINT).exists():
            raise OpzoError(f"--resume: no checkpoint at {out / CHECKPOINT}; run without --resume first.")
    elif existing and not args.overwrite:
        raise OpzoError(f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
                        f"--out with another folder for a new run, or --overwrite to start it again (its files "
                        f"are replaced).")


def _read_checkpoint(path: Path, args) -> dict:
    """The checkpoint's contents, checked against this run's options (before any data is read)."""
    fix = "start again with --overwrite (or another --out)"
    try:
        state = torch.load(path, map_location=args.device, weights_only=True)
    except Exception as exc:  # truncated zip, pickle errors, a file from elsewhere, ...
        raise OpzoError(f"--resume: cannot read {path} ({type(exc).__name__}: {str(exc).splitlines()[0]}); it is "
                        f"truncated or not an opzo-train checkpoint. Resume from an intact copy or {fix}.") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise OpzoError(f"--resume: {path} is not an opzo-train checkpoint (it lacks {', '.join(missing)}); {fix}.")
    if state["method"] != args.method or state["preset"] != args.preset:
        raise OpzoError(f"--resume: {path} was made by preset {state['preset']!r} with method "
                        f"{state['method']!r}, not {args.preset!r} / {args.method!r}; pass --preset "
                        f"{state['preset']} --method {state['method']}, or {fix}.")
    if "local" in state and state["local"] != bool(args.local):
        raise OpzoError(f"--resume: {path} was trained {'with' if state['local'] else 'without'} --local; "
                        f"{'add' if state['local'] else 'drop'} --local to continue it, or {fix}.")
    if "feedback_matrix" in state and state["feedback_matrix"] != args.feedback_matrix:
        raise OpzoError(f"--resume: {path} was trained with --feedback-matrix {state['feedback_matrix']}; pass "
                        f"it again to continue, or {fix}.")
    return state


def _restore(state: dict, path: Path, model, session, optimizer, scheduler, preset: Preset) -> None:
    try:
        model.load_state_dict(state["model"])
        session.load_state_dict(state["session"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise OpzoError(f"--resume: {path} does not fit this run ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0]}); it was made with other options (--set, "
                        f"--feedback-rank, ...). Resume with the options of that run, or start again with "
                        f"--overwrite (or another --out).") from None
    torch.set_rng_state(state["rng"].cpu())
    cuda_rng = state.get("cuda_rng")
    if cuda_rng is not None and _has_cuda():
        if len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_rng])
        else:
            print(f"opzo-train: warning: {path} holds the RNG state of {len(cuda_rng)} CUDA device(s), this machine "
                  f"has {torch.cuda.device_count()}; the CUDA RNG is not restored.", file=sys.stderr)
    if scheduler.T_max != preset.epochs:  # --epochs changed: the rest follows the new cosine schedule
        old, scheduler.T_max, t = scheduler.T_max, preset.epochs, scheduler.last_epoch
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            cosine = (1 + math.cos(math.pi * t / preset.epochs)) / 2
            group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * cosine
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
        print(f"opzo-train: the learning-rate schedule now spans --epochs {preset.epochs} (the checkpoint's spanned "
              f"{old}); epoch {t + 1} trains at lr {optimizer.param_groups[0]['lr']:.3g}.", flush=True)


def _reconcile_results(path: Path, state: dict) -> list[dict]:
    """Make ``results.jsonl`` hold exactly one line per epoch of the checkpoint: lines of epochs the
    checkpoint does not hold are dropped (they are trained again), a line lost after the checkpoint
    was written comes back from the checkpoint. Returns the records."""
    last = state["epoch"]
    kept: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn line
            if isinstance(record, dict) and isinstance(record.get("epoch"), int) and record["epoch"] <= last:
                kept[record["epoch"]] = record
    kept.update({r["epoch"]: r for r in state.get("records", [])})
    records = [kept[e] for e in sorted(kept)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    if not path.exists() or path.read_text() != text:
        replace_atomically(path, lambda tmp: tmp.write_text(text))
    return records


def _train_epoch(model, session, optimizer, loader, preset: Preset, args, epoch: int) -> dict:
    tqdm = require("tqdm", "opzo-train").tqdm

    model.train()
    started = time.perf_counter()
    loss_sum = correct = seen = 0
    total = len(loader) if args.limit_batches is None else min(args.limit_batches, len(loader))
    bar = tqdm(loader, total=total, desc=f"{args.preset}/{args.method} epoch {epoch + 1}", leave=False,
               disable=args.quiet)
    for b, (x, y) in enumerate(bar):
        if b >= total:
            break
        x, y = x.to(args.device), y.to(args.device)
        _reset(model)
        summed = 0
        for x_t in _step_inputs(x, preset):
            out = model(x_t)
            # each sample's loss through the session: method="zo" needs them (eq. 3), the others get the mean
            loss = session.loss(instantaneous_loss(out, y, preset.mse_weight, steps=preset.steps, reduction="none"))
            if args.local:
                loss = loss + session.local_loss(y) / preset.steps
            loss.backward()
            summed = summed + out.detach()
            loss_sum += loss.item() * len(y)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seen += len(y)
        correct += (summed.argmax(1) == y).sum().item()
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.1f}%")
    _reset(model)
    return {"train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
            "seconds": time.perf_counter() - started}


_FIXED = ("dataset", "model", "model_kwargs")  # chosen by --preset
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
_AT_LEAST_ONE = ("steps", "batch_size", "epochs", "finetune_epochs")
_CHOICES = {"feedback_scale": FEEDBACK_SCALES}


def _convert(key: str, text: str, kind) -> object:
    """``text`` as a value of the Preset field ``key`` of type ``kind``; :class:`ValueError` with the
    expected form otherwise."""
    origin = typing.get_origin(kind)
    if kind is bool:
        if text.strip().lower() in _TRUE:
            return True
        if text.strip().lower() in _FALSE:
            return False
        raise ValueError(f"takes true or false (also 1/0, yes/no, on/off), e.g. --set {key}=false")
    if kind is int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"takes an integer, e.g. --set {key}=64") from None
        if key in _AT_LEAST_ONE and value < 1:
            raise ValueError("must be at least 1")
        return value
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"takes a number, e.g. --set {key}=2e-4") from None
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if kind is str:
        if key in _CHOICES and text not in _CHOICES[key]:
            raise ValueError(f"takes one of {', '.join(_CHOICES[key])}")
        return text
    if kind is tuple or origin is tuple:
        args = typing.get_args(kind)
        items = [s.strip() for s in text.split(",") if s.strip()]
        if args and args[-1] is not Ellipsis and len(args) != len(items):
            raise ValueError(f"takes {len(args)} comma-separated values")
        types = [args[0]] * len(items) if len(args) == 2 and args[1] is Ellipsis else (list(args) or [str] * len(items))
        return tuple(_convert(key, s, t) for s, t in zip(items, types))
    raise ValueError(f"cannot be set from the command line (type {kind})")


def _preset(args) -> Preset:
    preset = PRESETS[args.preset]
    overrides = {}
    hints = typing.get_type_hints(Preset)
    settable = [f.name for f in dataclasses.fields(Preset) if f.name not in _FIXED]
    for item in args.set or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            raise OpzoError(f"--set {item!r}: expected KEY=VALUE, e.g. --set batch_size=64.")
        if key not in settable:
            raise OpzoError(f"--set {item!r}: unknown preset field {key!r}; valid: {', '.join(settable)}.")
        try:
            overrides[key] = _convert(key, value.strip(), hints[key])
        except ValueError as exc:
            raise OpzoError(f"--set {item!r}: {key} {exc} (the preset's value is {getattr(preset, key)!r}).") from None
    if args.epochs is not None:
        overrides.setdefault("epochs", args.epochs)
    return preset.with_overrides(**overrides)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opzo-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--method", required=True, choices=METHOD_NAMES)
    p.add_argument("--local", action="store_true", help="add local learning (readout per layer, loss x 0.01)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs of the schedule (learning rate, alpha); default: the preset's. With --resume a "
                        "new value re-plans the cosine schedule of the epochs still to train")
    p.add_argument("--stop-after", type=positive_int, default=None, metavar="K",
                   help="stop after K epochs (continue later with --resume)")
    p.add_argument("--limit-batches", type=positive_int, default=None, help="train on at most N batches per epoch")
    p.add_argument("--limit-test-batches", type=positive_int, default=None, help="evaluate on at most N batches")
    p.add_argument("--train-samples", type=positive_int, default=None, help="use the first N training samples")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", default="data")
    add_download_option(p)
    p.add_argument("--out", default=None, help="run folder (default runs/PRESET-METHOD[-local])")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start again in an OUT that already holds a run (its checkpoint and results are replaced)")
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset field (repeatable), typed as the field: e.g. batch_size=64, "
                        "frames=false, lr=1e-4")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_feedback_options(p)
    return p


def add_feedback_options(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """``--feedback-matrix`` / ``--feedback-rank``: how M is stored (:class:`~opzo_ext.TrainConfig`)."""
    p.add_argument("--feedback-matrix", default=default, choices=FEEDBACK_MATRICES,
                   help="storage of the feedback matrices: dense float32, one row per conv channel, bfloat16, "
                        f"or rank --feedback-rank (default {default}" +
                        (": dense if it fits, else channel)" if default == "auto" else ")"))
    p.add_argument("--feedback-rank", type=positive_int, default=64, help="rank of --feedback-matrix lowrank")


@contextlib.contextmanager
def sigterm_unwinds():
    """SIGTERM (``kill``, a job scheduler's time limit) raises KeyboardInterrupt like Ctrl-C, so
    temporary files are cleaned up on the way out; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.out is None:
        args.out = f"runs/{args.preset}-{args.method}{'-local' if args.local else ''}"
    try:
        with sigterm_unwinds():
            run(args)
    except OpzoError as exc:
        print(f"opzo-train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        checkpoint = Path(args.out) / CHECKPOINT
        print("\nopzo-train: interrupted; " + (
            f"{checkpoint} holds the last finished epoch, continue with --resume." if checkpoint.exists() else
            "no epoch had finished, nothing was saved."), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

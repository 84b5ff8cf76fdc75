"""``opzo-train``: train one of the paper's workloads with any credit-assignment method.

    opzo-train --preset mnist --method opzo --epochs 5
    opzo-train --preset cifar10 --method dfa --local --set batch_size=64 --device cuda
    opzo-train --preset mnist --method opzo --epochs 10 --resume      # continue bit-exactly

Each epoch appends one JSON line to ``OUT/results.jsonl`` and writes ``OUT/checkpoint.pt``
(model, optimizer, scheduler, session state with M, RNG); ``--resume`` continues from it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Subset

from . import models  # needs opzo_ext[spikingjelly], and says so
from ._optional import require
from .config import FEEDBACK_MATRICES, METHOD_NAMES
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


def run(args: argparse.Namespace) -> list[dict]:
    """Train as ``args`` says; returns the JSON records of the epochs run."""
    preset = _preset(args)
    try:
        train_set = get_dataset(preset.dataset, args.data_root, train=True)
        test_set = get_dataset(preset.dataset, args.data_root, train=False)
    except (FileNotFoundError, RuntimeError) as exc:
        raise OpzoError(f"the data of preset {args.preset!r} is not available under {args.data_root!r}: {exc}") from exc
    if args.train_samples:
        train_set = Subset(train_set, range(min(args.train_samples, len(train_set))))

    torch.manual_seed(args.seed)
    kwargs = dict(preset.model_kwargs)
    kwargs["dropout"] = 0.0 if args.method == "zo" else preset.dropout
    model = MODELS[preset.model](**kwargs).to(args.device)
    lr = preset.zo_lr if args.method == "zo" else preset.lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=preset.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=preset.epochs)
    example = _step_inputs(train_set[0][0][None].to(args.device), preset)[0]  # attach at once: the
    session = opzo_train(  # local readouts must be in the optimizer before its state is loaded
        model, args.method, alpha=linear_alpha(preset.alpha_start, preset.alpha_end, preset.epochs),
        momentum=preset.momentum, feedback_scale=preset.feedback_scale, local=preset.local_scale if args.local else False,
        optimizer=optimizer, seed=args.seed, example_input=example, feedback_matrix=args.feedback_matrix,
        feedback_rank=args.feedback_rank)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    start = 0
    records = []
    with session:
        if args.resume:
            if not checkpoint.exists():
                raise OpzoError(f"--resume: no checkpoint at {checkpoint}; run without --resume first.")
            state = torch.load(checkpoint, map_location=args.device, weights_only=True)
            if state["method"] != args.method or state["preset"] != args.preset:
                raise OpzoError(f"--resume: {checkpoint} was made by preset {state['preset']!r} with method "
                                f"{state['method']!r}, not {args.preset!r} / {args.method!r}.")
            model.load_state_dict(state["model"])
            session.load_state_dict(state["session"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            start = state["epoch"] + 1
        test_loader = DataLoader(test_set, batch_size=preset.batch_size, shuffle=False)
        stop = preset.epochs if args.stop_after is None else min(args.stop_after, preset.epochs)
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
            with open(out / "results.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "session": session.state_dict(),
                        "rng": torch.get_rng_state(), "epoch": epoch, "preset": args.preset,
                        "method": args.method}, tmp)
            os.replace(tmp, checkpoint)
            print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f} acc {100 * record['train_acc']:.2f}% "
                  f"| test acc {100 * record['test_acc']:.2f}% ({record['seconds']:.0f} s)", flush=True)
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


def _preset(args) -> Preset:
    preset = PRESETS[args.preset]
    overrides = {}
    fields = {f.name: f.type for f in dataclasses.fields(Preset)}
    for item in args.set or []:
        key, _, value = item.partition("=")
        if key not in fields or key in ("dataset", "model", "model_kwargs"):
            raise OpzoError(f"--set {item!r}: unknown preset field {key!r}; valid: "
                            f"{', '.join(k for k in fields if k not in ('dataset', 'model', 'model_kwargs'))}.")
        current = getattr(preset, key)
        overrides[key] = type(current)(value)
    if args.epochs is not None:
        overrides.setdefault("epochs", args.epochs)
    return preset.with_overrides(**overrides)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opzo-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--method", required=True, choices=METHOD_NAMES)
    p.add_argument("--local", action="store_true", help="add local learning (readout per layer, loss x 0.01)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of the schedule (learning rate, alpha); default: the preset's")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="stop after K epochs (continue later with --resume)")
    p.add_argument("--limit-batches", type=int, default=None, help="train on at most N batches per epoch")
    p.add_argument("--limit-test-batches", type=int, default=None, help="evaluate on at most N batches")
    p.add_argument("--train-samples", type=int, default=None, help="use the first N training samples")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default=None, help="output folder (default runs/PRESET-METHOD[-local])")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--seed", type=int, default=2022)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a preset field (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_feedback_options(p)
    return p


def add_feedback_options(p: argparse.ArgumentParser) -> None:
    """``--feedback-matrix`` / ``--feedback-rank``: how M is stored (:class:`~opzo_ext.TrainConfig`)."""
    p.add_argument("--feedback-matrix", default="auto", choices=FEEDBACK_MATRICES,
                   help="storage of the feedback matrices: dense float32, one row per conv channel, bfloat16, "
                        "or rank --feedback-rank (default auto: dense if it fits, else channel)")
    p.add_argument("--feedback-rank", type=int, default=64, help="rank of --feedback-matrix lowrank")


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.out is None:
        args.out = f"runs/{args.preset}-{args.method}{'-local' if args.local else ''}"
    try:
        run(args)
    except OpzoError as exc:
        print(f"opzo-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

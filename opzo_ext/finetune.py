"""``opzo-finetune``: fine-tune a trained SNN under hardware noise (table 4 of the paper).

    opzo-finetune --checkpoint runs/mnist-bp/checkpoint.pt --preset mnist --sigma 0.3 --method opzo
    opzo-finetune --checkpoint ottt_nfresnet34.pth --preset imagenet --sigma 0.1 --method opzo --epochs 5

``--epochs`` defaults to the preset's ``finetune_epochs``: 5 for ``imagenet`` (table 4 of the
paper fine-tunes 5 epochs), 1 for the small presets (the runs in ``docs/results/finetune*.md``).
A progress bar per epoch shows the fine-tuning (``--quiet``: none).

The second line is table 4 itself: OTTT's pre-trained NF-ResNet-34 on ImageNet (``--data-root``
holding ``imagenet/train`` and ``imagenet/val``, see :mod:`opzo_ext.data.imagenet`), batch 64,
AdamW 2e-6 (ZO 2e-7) without weight decay.

Prints clean accuracy, accuracy under noise before fine-tuning and after it. The noise is
``sigma * N(0, 1)`` (:func:`opzo_ext.noisy`) on the input current of every spiking neuron
(``--noise-site neuron``, the default for the FC and conv presets) or on the output of every
convolution (``--noise-site conv``, the default for the NF-ResNets: table 4's "added to the results
after convolutional operations", stem, block and downsample convolutions included). For
``opzo``/``zo`` it is also the perturbation: ``alpha = sigma``, ``inject="before"`` (``"conv"``
with ``--noise-site conv``), no antithetic pairs (appendix C.3.2); ``bp``/``dfa``/``dkp`` train with
the same noise present in the forward. With ``--noise-site conv`` the NF-ResNet blocks' scalar skip
gains stay fixed for every method: they multiply a convolution's output after the noise, where no
error enters (recorded as ``frozen`` in the results).
The checkpoint may be an ``opzo-train`` checkpoint, OTTT's ``{'net': ...}`` or any state dict.

``--readout-only`` is the control that tells what the hidden layers' updates are worth: only the
readout (the last Linear or Conv layer, the one feeding the output) is trained, with its exact
gradient under the noise (method ``bp``); every other parameter stays bit-identical.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ._optional import require
from .cli import (MODELS, _reset, _step_inputs, add_download_option, add_feedback_options, check_device, evaluate,
                  load_dataset, positive_int, save_atomically, sigterm_unwinds)
from .config import FEEDBACK_SCALES, METHOD_NAMES, TrainConfig
from .deploy import noisy
from .errors import OpzoError
from .losses import instantaneous_loss
from .models import CheckpointError, load_ottt_checkpoint
from .presets import PRESETS
from .session import train as opzo_train


def readout_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The readout of one of :mod:`opzo_ext.models`' networks: its last Linear or Conv layer (in
    module order), the synaptic layer feeding the output. Returns ``(name, module)``."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and any(True for _ in m.parameters())]
    if not found:
        raise OpzoError(f"--readout-only: {type(model).__name__} has no Linear or Conv layer to train.")
    return found[-1]


def _check_method(args: argparse.Namespace) -> None:
    if args.readout_only:
        if args.method not in (None, "bp"):
            raise OpzoError(f"--readout-only trains the readout with its exact gradient (method bp); "
                            f"--method {args.method} would only add that method's unused feedback.")
        args.method = "bp"
    elif args.method is None:
        raise OpzoError("--method is required (or --readout-only, the readout-only control).")


def run(args: argparse.Namespace) -> dict:
    _check_method(args)
    if args.save is not None and args.save.exists():  # checked before the run, never overwritten
        raise OpzoError(f"--save {args.save} exists; choose another file or move it away first.")
    for flag, path in (("--save", args.save), ("--json", args.json)):  # checked before the run too
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OpzoError(f"{flag} {path}: cannot create its folder ({exc}); choose another file.") from None
            if not os.access(path.parent, os.W_OK):
                raise OpzoError(f"{flag} {path}: its folder is not writable; choose another file.")
    check_device(args.device)
    tqdm = require("tqdm", "opzo-finetune").tqdm
    torch.manual_seed(args.seed)  # the noise bp/dfa/dkp train under comes from torch's global RNG
    preset = PRESETS[args.preset]
    if args.epochs is None:
        args.epochs = preset.finetune_epochs
    model_name = args.model or preset.model
    site = args.noise_site or ("conv" if model_name.startswith("nf_resnet") else "neuron")
    config = TrainConfig(method=args.method, alpha=args.sigma, inject="conv" if site == "conv" else "before",
                         antithetic=False,  # checked first
                         momentum=preset.momentum, feedback_scale=args.feedback_scale or preset.feedback_scale,
                         seed=args.seed,
                         feedback_matrix=args.feedback_matrix,
                         feedback_rank=args.feedback_rank)
    if args.lr is None:
        args.lr = preset.finetune_zo_lr if args.method == "zo" else preset.finetune_lr
    kwargs = dict(preset.model_kwargs)
    kwargs["dropout"] = 0.0
    model = MODELS[model_name](**kwargs).to(args.device)
    if site == "conv" and not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        raise OpzoError(f"--noise-site conv: {model_name} has no convolution; use --noise-site neuron.")
    try:
        report = load_ottt_checkpoint(model, args.checkpoint, strict=not args.non_strict)
    except (CheckpointError, FileNotFoundError, IsADirectoryError) as exc:  # the loader's advice, as flags
        raise OpzoError(str(exc).replace("Pass strict=False", "Pass --non-strict")
                        .replace("strict=False", "--non-strict")) from exc
    if not report.ok:
        print(f"checkpoint loaded with differences:\n{report}", file=sys.stderr)
    test_set = load_dataset(preset, args, train=False)
    train_set = load_dataset(preset, args, train=True)
    if args.train_samples:
        train_set = Subset(train_set, range(min(args.train_samples, len(train_set))))
    test_loader = DataLoader(test_set, batch_size=preset.batch_size)
    limit = args.limit_test_batches

    def noisy_accuracy() -> float:
        with noisy(model, args.sigma, seed=args.seed, site=site):
            return evaluate(model, test_loader, preset, args.device, limit)

    result = {"checkpoint": str(args.checkpoint), "preset": args.preset, "model": model_name, "method": args.method,
              "readout_only": bool(args.readout_only),
              "sigma": args.sigma, "noise_site": site, "feedback_matrix": args.feedback_matrix,
              "feedback_scale": config.feedback_scale,
              "epochs": args.epochs, "lr": args.lr, "seed": args.seed, "train_samples": len(train_set),
              "limit_batches": args.limit_batches, "limit_test_batches": limit,
              "clean_acc": evaluate(model, test_loader, preset, args.device, limit),
              "noisy_acc_before": noisy_accuracy()}
    if site == "conv":  # a gain after the noise gets no error with inject="conv": fixed for every method
        result["frozen"] = [n for n, p in model.named_parameters() if n.endswith("skipinit_gain") and p.requires_grad]
        for name in result["frozen"]:
            model.get_parameter(name).requires_grad_(False)
    if args.readout_only:  # the control: everything but the readout frozen, and not in the optimizer
        name, readout = readout_layer(model)
        keep = {id(p) for p in readout.parameters()}
        for p in model.parameters():
            if id(p) not in keep:
                p.requires_grad_(False)
        params = list(readout.parameters())
        result["readout"] = name
    else:
        params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    perturbs = args.method in ("opzo", "zo")
    session = opzo_train(model, config=config, optimizer=optimizer)  # health checks use its eps
    generator = torch.Generator().manual_seed(args.seed)
    with session:
        for epoch in range(args.epochs):
            session.epoch = epoch
            model.train()
            loader = DataLoader(train_set, batch_size=preset.batch_size, shuffle=True, generator=generator)
            total = len(loader) if args.limit_batches is None else min(args.limit_batches, len(loader))
            bar = tqdm(loader, total=total, leave=False, disable=args.quiet,
                       desc=f"{'readout-only' if args.readout_only else args.method} fine-tuning epoch "
                            f"{epoch + 1}/{args.epochs}")
            loss_sum = seen = 0
            for b, (x, y) in enumerate(bar):
                if b >= total:
                    break
                x, y = x.to(args.device), y.to(args.device)
                _reset(model)
                # opzo/zo: the session's perturbation is the hardware noise; the others see it added
                with (nullcontext() if perturbs else noisy(model, args.sigma, site=site)):
                    for x_t in _step_inputs(x, preset):
                        loss = instantaneous_loss(model(x_t), y, preset.mse_weight, steps=preset.steps, reduction="none")
                        loss = session.loss(loss)
                        loss.backward()  # each sample's loss: zo needs them
                        loss_sum = loss_sum + loss.detach() * len(y)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                seen += len(y)
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}")
            bar.close()
            _reset(model)
    result["feedback_layout"] = session.layout  # what the session used: recorded with the results
    if session.layout not in (None, "dense") and args.feedback_matrix == "auto":
        print(f"opzo-finetune: WARNING: the feedback matrices do not fit dense; this run used "
              f"feedback_matrix={session.layout!r}, an approximation the paper does not use "
              "(recorded as feedback_layout in the results).", file=sys.stderr)
    result["noisy_acc_after"] = noisy_accuracy()
    result["clean_acc_after"] = evaluate(model, test_loader, preset, args.device, limit)
    if args.save is not None:
        save_atomically(model.state_dict(), args.save)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opzo-finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--preset", required=True, choices=sorted(PRESETS), help="data set, T and model of the run")
    p.add_argument("--model", choices=sorted(MODELS), default=None, help="override the preset's model")
    p.add_argument("--sigma", type=float, required=True, help="noise scale (sigma * N(0, 1) at every noise site)")
    p.add_argument("--noise-site", choices=("neuron", "conv"), default=None,
                   help="where the noise is added: every neuron's input current, or every convolution's output "
                        "(default: conv for the NF-ResNets, as in table 4 of the paper; neuron otherwise)")
    p.add_argument("--method", choices=METHOD_NAMES, default=None,
                   help="credit assignment of the fine-tuning (required unless --readout-only)")
    p.add_argument("--readout-only", action="store_true",
                   help="control: train only the readout (last Linear/Conv) with its exact gradient under the "
                        "noise (method bp), every other parameter frozen")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs of fine-tuning (default: the preset's: 5 for imagenet as in table 4 of the paper, "
                        "1 for the other presets)")
    p.add_argument("--feedback-scale", choices=FEEDBACK_SCALES, default=None,
                   help="what OPZO's feedback estimates (default: the preset's, 'jacobian'; 'paper': appendix C)")
    p.add_argument("--lr", type=float, default=None,
                   help="AdamW learning rate (default: the preset's; imagenet: 2e-6, ZO 2e-7 as in the paper)")
    p.add_argument("--limit-batches", type=positive_int, default=None, help="at most N batches per epoch")
    p.add_argument("--limit-test-batches", type=positive_int, default=None, help="evaluate on at most N batches")
    p.add_argument("--train-samples", type=positive_int, default=None, help="use the first N training samples")
    p.add_argument("--non-strict", action="store_true", help="load the checkpoint entries that fit")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data-root", default="data")
    add_download_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="append the result as a JSON line here")
    p.add_argument("--save", type=Path, default=None, help="write the fine-tuned model's state dict here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_feedback_options(p, default="dense")  # the paper's M; another layout only when asked
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    try:
        with sigterm_unwinds():
            result = run(args)
    except (OpzoError, RuntimeError) as exc:
        print(f"opzo-finetune: error: {exc}", file=sys.stderr)
        return 2
    what = "readout-only" if args.readout_only else args.method
    print(f"clean {100 * result['clean_acc']:.2f}% | noisy (sigma={args.sigma}) before "
          f"{100 * result['noisy_acc_before']:.2f}% -> after {what} fine-tuning "
          f"{100 * result['noisy_acc_after']:.2f}% | clean after {100 * result['clean_acc_after']:.2f}%")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

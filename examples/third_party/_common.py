"""Helpers shared by the third-party setups in this folder: seeding, data subsets and loaders,
the readout-only control, timing, the result dict and the command line.

Every script exposes ``run(method, *, train_samples, test_samples, ...) -> dict`` and ``main()``;
the header of each script says what it reproduces and what differs.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

METHODS = ("bptt", "bp", "opzo", "dfa", "dkp", "zo", "none")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (call before building the network: same initial weights for
    every method)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def first(dataset: Dataset, n: int) -> Subset:
    """The first ``n`` samples of ``dataset`` (all of them if it has fewer)."""
    return Subset(dataset, range(min(int(n), len(dataset))))


def train_loader(dataset: Dataset, batch_size: int, seed: int, drop_last: bool = True,
                 collate_fn: Optional[Callable] = None) -> DataLoader:
    """Shuffled like the original, with a seeded generator: the same batch order for every method."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                      generator=generator, collate_fn=collate_fn)


def test_loader(dataset: Dataset, batch_size: int, collate_fn: Optional[Callable] = None) -> DataLoader:
    """Fixed order, last partial batch kept (every test sample counts)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=collate_fn)


def setup(defaults: Dict, overrides: Dict) -> Dict:
    """``defaults`` (the original's settings) updated by ``overrides``; an unknown key is an error."""
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise TypeError(f"unknown setup override(s) {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **overrides}


def readout_only(net: nn.Module, readout: nn.Module) -> List[nn.Parameter]:
    """Freeze every parameter of ``net`` except those of ``readout`` (``requires_grad=False``);
    returns the parameters left trainable (give only those to the optimizer)."""
    keep = {id(p) for p in readout.parameters()}
    for p in net.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
    return list(readout.parameters())


def method_name(method: Optional[str]) -> str:
    return "bptt" if method is None else method


def result(*, accuracy: float, losses: List[float], seconds: float, train_samples: int,
           test_samples: int, method: Optional[str], readout_only: bool, **extra) -> Dict:
    """The dict ``run`` returns: accuracy in percent on the test subset, the last training batch's
    loss (``final_loss``), the first one (``first_loss``) and every batch's (``losses``), the
    training time in seconds (evaluation excluded)."""
    return {
        "accuracy": float(accuracy),
        "final_loss": float(losses[-1]) if losses else float("nan"),
        "first_loss": float(losses[0]) if losses else float("nan"),
        "losses": [float(v) for v in losses],
        "seconds": float(seconds),
        "train_samples": int(train_samples),
        "test_samples": int(test_samples),
        "method": method_name(method),
        "readout_only": bool(readout_only),
        **extra,
    }


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_set(items: Iterable[str]) -> Dict:
    """``["alpha=0.1", "noise=rademacher"]`` -> ``{"alpha": 0.1, "noise": "rademacher"}``."""
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = _value(value.strip())
    return out


def main(run: Callable[..., Dict], description: str, train_samples: int, test_samples: int,
         extra: Optional[Callable[[argparse.ArgumentParser], None]] = None, argv=None) -> Dict:
    """The command line of every script: runs ``run`` once and prints the result (one JSON line)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--method", choices=METHODS, default="bptt",
                        help="bptt: the original training (no opzo session); else opzo.train(method=...)")
    parser.add_argument("--readout-only", action="store_true",
                        help="control: train only the readout (last Linear), everything else frozen")
    parser.add_argument("--local", action="store_true",
                        help="add the paper's local learning (a readout per hidden layer, loss scale 0.01; "
                             "--set local=S for another scale); with --method none: local learning alone, the "
                             "control for what the method's feedback adds")
    parser.add_argument("--train-samples", type=int, default=train_samples)
    parser.add_argument("--test-samples", type=int, default=test_samples)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the opzo session (repeatable), e.g. --set alpha=0.1")
    parser.add_argument("--setup", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting of the original setup (repeatable), e.g. --setup num_steps=10")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    kwargs = {k: v for k, v in vars(args).items()
              if k not in ("method", "readout_only", "local", "train_samples", "test_samples", "epochs", "seed",
                           "data_root", "device", "progress", "set", "setup")}
    res = run(None if args.method == "bptt" else args.method, train_samples=args.train_samples,
              test_samples=args.test_samples, epochs=args.epochs, seed=args.seed,
              readout_only=args.readout_only, local=args.local, options=parse_set(args.set), data_root=args.data_root,
              progress=args.progress, device=args.device, **parse_set(args.setup), **kwargs)
    shown = {k: v for k, v in res.items() if k != "losses"}
    print(json.dumps(shown))
    return res

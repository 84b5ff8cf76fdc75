"""Session lifecycle: entering and leaving leaves the model exactly as it was, sessions do not nest,
evaluation inside a session is untouched, feedback matrices, and exact resume from state_dict."""
from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
import torch.nn.modules.module as module_globals

import snntorch as snn
import snntorch.utils
from spikingjelly.activation_based import functional, layer, neuron

import opzo_ext as opzo

METHODS = ("bp", "opzo", "dfa", "dkp", "zo")
T = 3


# ---------------------------------------------------------------------------- models

SESSIONS: list = []  # sessions opened through track()


def track(session):
    """``session``, remembered so that the loops below can hand it each sample's loss (ZO needs them)."""
    SESSIONS.append(session)
    return session


def _open_session(net):
    return next((s for s in reversed(SESSIONS) if s.model is net and s._open), None)


def ce(net, out, y):
    """Cross-entropy, through the open session on ``net`` if there is one."""
    session = _open_session(net)
    return session.loss(F.cross_entropy(out, y, reduction="none")) if session else F.cross_entropy(out, y)


def _boost(model: nn.Module, factor: float = 3.0) -> nn.Module:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
                m.weight.mul_(factor)
    return model


def snn_reset(net: nn.Module) -> None:
    """``snntorch.utils.reset`` resets the neurons listed in each class's ``instances``, which
    deep copies are not in; reset those explicitly too."""
    snntorch.utils.reset(net)
    for m in net.modules():
        if isinstance(m, snn.SpikingNeuron) and hasattr(m, "reset_mem"):
            m.reset_mem()


def snn_seq(hidden: int = 24, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return _boost(nn.Sequential(nn.Linear(10, hidden), snn.Leaky(beta=0.5, init_hidden=True),
                                nn.Linear(hidden, 16), snn.Leaky(beta=0.5, init_hidden=True), nn.Linear(16, 4)))


class TutorialNet(nn.Module):
    def __init__(self, hidden: int = 24):
        super().__init__()
        self.fc1 = nn.Linear(10, hidden)
        self.lif1 = snn.Leaky(beta=0.5)
        self.fc2 = nn.Linear(hidden, 4)
        self.lif2 = snn.Leaky(beta=0.5)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk_rec, mem_rec = [], []
        for _ in range(T):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk_rec.append(spk2)
            mem_rec.append(mem2)
        return torch.stack(spk_rec), torch.stack(mem_rec)


def tutorial(hidden: int = 24, seed: int = 0) -> TutorialNet:
    torch.manual_seed(seed)
    return _boost(TutorialNet(hidden))


def sj_net(mode: str, hidden: int = 16, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(layer.Conv2d(1, 4, 3, padding=1), neuron.LIFNode(), layer.MaxPool2d(2), layer.Flatten(),
                        layer.Linear(64, hidden), neuron.LIFNode(), layer.Linear(hidden, 4))
    functional.set_step_mode(net, mode)
    return _boost(net, 4.0)


@dataclass
class Case:
    """A model family and the user's loop for it."""

    make: Callable[..., nn.Module]
    x_shape: tuple  # one batch of input
    kind: str  # "step": net(x[t]) per step; "tutorial": time loop inside forward; "multi": SJ 'm'
    reset: Callable[[nn.Module], None]
    layers: dict  # expected feedback shapes [n_l, m]

    def data(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(self.x_shape, generator=g) * 3
        batch = self.x_shape[0] if self.kind == "tutorial" else self.x_shape[1]
        return x, torch.randint(4, (batch,), generator=g)

    def sequence(self, net, x) -> torch.Tensor:
        """The model's outputs over one sequence, from reset states."""
        self.reset(net)
        if self.kind == "step":
            return torch.stack([net(x[t]) for t in range(T)])
        if self.kind == "tutorial":
            return torch.cat(net(x))
        return net(x)

    def train_batch(self, net, x, y) -> None:
        self.reset(net)
        if self.kind == "step":
            for t in range(T):
                ce(net, net(x[t]), y).backward()
        elif self.kind == "tutorial":
            _, mem = net(x)
            per_step = torch.stack([F.cross_entropy(mem[t], y, reduction="none") for t in range(T)])
            loss = per_step.sum(0).mean()
            session = _open_session(net)
            (session.loss(per_step, reduction="sum") / len(y) if session else loss).backward()
        else:
            ce(net, net(x).mean(0), y).backward()


CASES = {
    "snntorch": Case(snn_seq, (T, 4, 10), "step", snn_reset, {"1": (24, 4), "3": (16, 4)}),
    "tutorial": Case(tutorial, (4, 10), "tutorial", lambda net: None, {"lif1": (24, 4)}),
    "sj-s": Case(lambda **kw: sj_net("s", **kw), (T, 2, 1, 8, 8), "step", functional.reset_net,
                 {"1": (256, 4), "5": (16, 4)}),
    "sj-m": Case(lambda **kw: sj_net("m", **kw), (T, 2, 1, 8, 8), "multi", functional.reset_net,
                 {"1": (256, 4), "5": (16, 4)}),
}


# ------------------------------------------------------------------------- snapshots

HOOK_GLOBALS = [k for k in vars(module_globals) if k.startswith("_global_") and "hook" in k]


def snapshot(model: nn.Module) -> dict:
    """Everything a session could leave behind on the model's modules."""
    snap = {}
    for name, m in model.named_modules():
        d = vars(m)
        hooks = {k: len(v) for k, v in d.items() if "hook" in k and hasattr(v, "__len__")}
        snap[name] = (frozenset(d), hooks, d.get("forward"), d.get("multi_step_forward"))
    snap[None] = {k: len(getattr(module_globals, k)) for k in HOOK_GLOBALS
                  if hasattr(getattr(module_globals, k), "__len__")}
    return snap


def warmed(case: Case, **kw) -> nn.Module:
    """A model after one plain forward (libraries create some attributes lazily), states reset."""
    net = case.make(**kw)
    with torch.no_grad():
        case.sequence(net, case.data()[0])
    case.reset(net)
    return net


def assert_same_behaviour(case: Case, net: nn.Module, ref: nn.Module) -> None:
    """Same outputs in train and eval mode, and same full-BPTT gradients as ``ref``."""
    x, _ = case.data(seed=7)
    for train in (True, False):
        net.train(train), ref.train(train)
        with torch.no_grad():
            assert torch.equal(case.sequence(net, x), case.sequence(ref, x))
    net.train(), ref.train()
    for m in (net, ref):
        m.zero_grad(set_to_none=True)
        out = case.sequence(m, x)  # one backward through all steps: BPTT must work again
        (out.pow(2).sum() + out.sum()).backward()
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        assert p.grad is not None and torch.equal(p.grad, q.grad), n


# ------------------------------------------------------------- exit restores the model

@pytest.mark.parametrize("raises", [False, True], ids=["normal", "exception"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case_name", list(CASES))
def test_exit_restores_model(case_name, method, raises):
    case = CASES[case_name]
    net = warmed(case)
    ref = copy.deepcopy(net)
    before, keys = snapshot(net), list(net.state_dict())
    backward = torch.autograd.backward
    x, y = case.data()

    if raises:
        with pytest.raises(KeyError, match="user error"):
            with track(opzo.train(net, method=method, momentum=0.5, seed=0)) as session:
                case.train_batch(net, x, y)
                assert snapshot(net) != before  # the session did attach something
                raise KeyError("user error")
    else:
        with track(opzo.train(net, method=method, momentum=0.5, seed=0)) as session:
            case.train_batch(net, x, y)
            case.train_batch(net, x, y)
    assert session.steps > 0

    assert snapshot(net) == before
    assert list(net.state_dict()) == keys
    assert torch.autograd.backward is backward
    assert_same_behaviour(case, net, ref)
    with track(opzo.train(net, method=method)):  # nothing left registered as open
        pass


@pytest.mark.parametrize("case_name", ["snntorch", "sj-m"])
def test_exit_restores_preexisting_instance_forward(case_name):
    case = CASES[case_name]
    net = warmed(case)
    synapse, neuron_module = net[2], net[1]  # the Linear after the first hidden neuron, that neuron
    synapse.forward = type(synapse).forward.__get__(synapse)  # e.g. an instrumentation wrapper
    if case_name == "sj-m":
        neuron_module.multi_step_forward = type(neuron_module).multi_step_forward.__get__(neuron_module)
    before = snapshot(net)
    with track(opzo.train(net, method="opzo", seed=0)):
        case.train_batch(net, *case.data())
    assert snapshot(net) == before


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 8)
        self.lif = snn.Leaky(beta=0.5, init_hidden=True)
        self.head_a, self.head_b = nn.Linear(8, 2), nn.Linear(8, 3)

    def forward(self, x):
        h = self.lif(self.fc(x))
        return self.head_a(h), self.head_b(h)


@pytest.mark.parametrize("where", ["first_step", "example_input"])
def test_engine_error_restores_model(where):
    """An error raised by opzo_ext itself (here: two readouts) also leaves the model clean."""
    net = TwoHeads()
    x = torch.rand(2, 10)
    with torch.no_grad():
        net(x)
    snntorch.utils.reset(net)
    before = snapshot(net)
    with pytest.raises(opzo.UnsupportedModelError, match="one readout"):
        if where == "example_input":
            with track(opzo.train(net, method="zo", example_input=x)):
                pass
        else:
            with track(opzo.train(net, method="zo")):
                a, b = net(x)
    assert snapshot(net) == before
    session = opzo.train(net, method="opzo").open()  # not left registered as open
    session.close()
    session.close()  # idempotent
    assert snapshot(net) == before


# ------------------------------------------------------------------------- nesting

def test_nested_session_same_model_raises():
    net = snn_seq()
    x, y = CASES["snntorch"].data()
    with track(opzo.train(net, method="opzo")) as outer:
        CASES["snntorch"].train_batch(net, x, y)
        inside = snapshot(net)
        for method in ("opzo", "bp"):
            with pytest.raises(opzo.OpzoError, match="already has an open opzo_ext session"):
                with track(opzo.train(net, method=method)):
                    pass
        assert snapshot(net) == inside  # the refused session attached nothing
        CASES["snntorch"].train_batch(net, x, y)  # the outer one still works
    assert outer.steps == 2 * T
    with track(opzo.train(net, method="dfa")) as again:
        CASES["snntorch"].train_batch(net, x, y)
    assert again.steps == T


def _two_level() -> nn.Sequential:
    inner = nn.Sequential(nn.Linear(10, 8), snn.Leaky(beta=0.5, init_hidden=True),
                          nn.Linear(8, 8), snn.Leaky(beta=0.5, init_hidden=True))
    return nn.Sequential(inner, nn.Linear(8, 4))


def test_nested_session_on_submodule_raises():
    net = _two_level()
    with track(opzo.train(net, method="opzo")):
        with pytest.raises(opzo.OpzoError, match="already has an open opzo_ext session"):
            opzo.train(net[0], method="opzo").open()
    with track(opzo.train(net[0], method="opzo")):  # now free
        pass


def test_session_on_parent_of_open_submodule_raises():
    net = _two_level()
    with track(opzo.train(net[0], method="bp")):
        with pytest.raises(opzo.OpzoError, match="already has an open opzo_ext session"):
            with track(opzo.train(net, method="opzo")):
                pass
    with track(opzo.train(net, method="opzo")):
        pass


def test_session_on_model_sharing_a_module_with_an_open_session_raises():
    lif = snn.Leaky(beta=0.5, init_hidden=True)
    a = nn.Sequential(nn.Linear(10, 8), lif, nn.Linear(8, 4))
    b = nn.Sequential(nn.Linear(10, 8), lif, nn.Linear(8, 3))
    with track(opzo.train(a, method="opzo")):
        with pytest.raises(opzo.OpzoError, match="already has an open opzo_ext session"):
            with track(opzo.train(b, method="opzo")):
                pass


def test_sessions_on_separate_models_coexist():
    case = CASES["snntorch"]
    a, b = snn_seq(seed=0), snn_seq(seed=1)
    x, y = case.data()
    with opzo.train(a, method="opzo", seed=0) as sa, track(opzo.train(b, method="zo", seed=0)) as sb:
        case.train_batch(a, x, y)
        case.train_batch(b, x, y)
    assert sa.steps == sb.steps == T
    assert all(torch.isfinite(p.grad).all() for p in list(a.parameters()) + list(b.parameters()))


# --------------------------------------------------------------- evaluation untouched

@pytest.mark.parametrize("case_name", list(CASES))
def test_eval_inside_session_equals_plain_model(case_name):
    case = CASES[case_name]
    net = case.make()
    ref = copy.deepcopy(net)
    x, y = case.data()
    xe, _ = case.data(seed=3)

    def expected(train: bool):
        ref.train(train)
        with torch.no_grad():
            return case.sequence(ref, xe)

    with track(opzo.train(net, method="opzo", momentum=0.5, alpha=0.5, seed=0)):
        for trained in (False, True):  # before the first training step, and after it
            if trained:
                net.train()
                case.train_batch(net, x, y)  # no optimizer step: weights unchanged
            net.eval()
            with torch.no_grad():
                assert torch.equal(case.sequence(net, xe), expected(False))
            assert torch.equal(case.sequence(net, xe).detach(), expected(False))  # eval, grad on
            net.train()
            with torch.no_grad():
                assert torch.equal(case.sequence(net, xe), expected(True))  # train, no_grad


# ---------------------------------------------------------------- feedback matrices

@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case_name", list(CASES))
def test_feedback_matrices(case_name, method):
    case = CASES[case_name]
    net = case.make()
    history = []
    with track(opzo.train(net, method=method, momentum=0.5, seed=0)) as session:
        for b in range(3):
            case.train_batch(net, *case.data(seed=b))
            history.append({k: v.clone() for k, v in session.feedback.items()})
    if method in ("bp", "zo"):
        assert session.feedback == {}
        return
    assert list(session.feedback) == session.layers == list(case.layers)
    for name, shape in case.layers.items():
        assert tuple(session.feedback[name].shape) == shape
    for earlier, later in zip(history, history[1:]):
        for name in case.layers:
            same = torch.equal(earlier[name], later[name])
            assert same if method == "dfa" else not same, (method, name)
    if method == "opzo":
        assert all(m.abs().sum() > 0 for m in session.feedback.values())


def test_dfa_matrices_fixed_within_a_sequence():
    """Per-step loop: B is the same object-value after every single step."""
    net = snn_seq()
    x, y = CASES["snntorch"].data()
    with track(opzo.train(net, method="dfa", seed=0)) as session:
        snntorch.utils.reset(net)
        seen = []
        for t in range(T):
            F.cross_entropy(net(x[t]), y).backward()
            seen.append({k: v.clone() for k, v in session.feedback.items()})
    for s in seen[1:]:
        assert all(torch.equal(s[k], seen[0][k]) for k in seen[0])


# ------------------------------------------------------------------ state_dict resume

def _roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf)  # the default (weights_only=True) must be able to read it


def _train(case, net, opt, batches):
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        case.train_batch(net, x, y)
        opt.step()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case_name", list(CASES))
def test_state_dict_resume_is_bit_identical(case_name, method):
    case = CASES[case_name]
    batches = [case.data(seed=s) for s in range(4)]
    options = dict(method=method, momentum=0.5, alpha=0.3, noise="gaussian")

    net = case.make(seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    with track(opzo.train(net, seed=11, **options)) as session:
        _train(case, net, opt, batches[:2])
        saved = _roundtrip({"model": net.state_dict(), "opt": opt.state_dict(), "session": session.state_dict()})
        _train(case, net, opt, batches[2:])
    expected = {n: p.detach().clone() for n, p in net.named_parameters()}

    def resume(load: bool):
        net2 = case.make(seed=1)  # other initial weights: all state comes from the checkpoint
        net2.load_state_dict(saved["model"])
        opt2 = torch.optim.SGD(net2.parameters(), lr=0.05, momentum=0.9)
        opt2.load_state_dict(saved["opt"])
        with track(opzo.train(net2, seed=12345, **options)) as session2:
            if load:
                session2.load_state_dict(saved["session"])
            _train(case, net2, opt2, batches[2:])
        return net2, session2

    net2, session2 = resume(load=True)
    assert session2.steps == session.steps
    for n, p in net2.named_parameters():
        assert torch.equal(p, expected[n]), f"{n} differs after resume"

    if method != "bp":  # the check above is meaningful: without the session state it differs
        net3, _ = resume(load=False)
        assert any(not torch.equal(p, expected[n]) for n, p in net3.named_parameters())


def test_load_state_dict_with_other_method_raises():
    net = snn_seq()
    with track(opzo.train(net, method="opzo", seed=0)) as session:
        CASES["snntorch"].train_batch(net, *CASES["snntorch"].data())
        state = session.state_dict()
    with track(opzo.train(snn_seq(), method="dfa")) as other:
        with pytest.raises(opzo.OpzoError, match=r"method='opzo'.*method='dfa'"):
            other.load_state_dict(state)


@pytest.mark.parametrize("method", ["opzo", "dfa"])
def test_load_state_dict_with_wrong_shapes_raises_at_first_step(method):
    case = CASES["snntorch"]
    net = snn_seq(hidden=24)
    with track(opzo.train(net, method=method, seed=0)) as session:
        case.train_batch(net, *case.data())
        state = _roundtrip(session.state_dict())

    small = snn_seq(hidden=20)  # same layer names, layer '1' has 20 neurons instead of 24
    x, y = case.data()
    with track(opzo.train(small, method=method, seed=0)) as other:
        other.load_state_dict(state)  # before the first step the layers are not known yet
        with pytest.raises(opzo.OpzoError, match=r"'1'.*\(24, 4\).*\(20, 4\)"):
            case.train_batch(small, x, y)


@pytest.mark.parametrize("method", ["opzo", "dfa"])
def test_load_state_dict_with_wrong_shapes_after_first_step_raises(method):
    """Loaded after the layers are known: raises at load or, at the latest, at the next step."""
    case = CASES["snntorch"]
    x, y = case.data()
    with track(opzo.train(snn_seq(hidden=24), method=method, seed=0)) as session:
        case.train_batch(session.model, x, y)
        state = session.state_dict()
    small = snn_seq(hidden=20)
    with track(opzo.train(small, method=method, seed=0)) as other:
        case.train_batch(small, x, y)
        with pytest.raises(opzo.OpzoError, match=r"\(24, 4\).*\(20, 4\)"):
            other.load_state_dict(state)
            case.train_batch(small, x, y)

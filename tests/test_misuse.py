"""A session that cannot be misused: re-opening, forgetting ``with``, loading the wrong state, the
user's optimizer, copies of the model, and inputs the methods cannot handle. Each case here failed
(silently or with an unrelated error) before the session guarded against it."""
from __future__ import annotations

import copy
import gc
import io

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

import opzo_ext as opzo

T, B = 3, 4


def net_fc(seed: int = 0, hidden: int = 12) -> nn.Sequential:
    torch.manual_seed(seed)
    sg = surrogate.Sigmoid(alpha=4.0)
    net = nn.Sequential(layer.Linear(6, hidden), neuron.LIFNode(surrogate_function=sg, v_threshold=0.5),
                        layer.Linear(hidden, 8), neuron.LIFNode(surrogate_function=sg, v_threshold=0.5),
                        layer.Linear(8, 4))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(3)
    return net


def batches(n: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(T, B, 6, generator=g) * 3, torch.randint(0, 4, (B,), generator=g)) for _ in range(n)]


def train_batch(net, x, y, session=None, optimizer=None):
    for t in range(T):
        loss = F.cross_entropy(net(x[t]), y)
        if session is not None and (session.config.local or session.config.igl):
            loss = loss + session.local_loss(y)
        loss.backward()
    if optimizer is not None:
        optimizer.step()
        optimizer.zero_grad()
    functional.reset_net(net)


def grads(net):
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------ re-opening
@pytest.mark.parametrize("how", ["with", "open"])
def test_a_reopened_session_trains_exactly_as_one_left_open(how):
    data = batches(2)
    net_a, net_b = net_fc(), net_fc()
    continuous = opzo.train(net_a, method="opzo", seed=3, momentum=0.9)
    with continuous:
        for x, y in data:
            train_batch(net_a, x, y)
    reopened = opzo.train(net_b, method="opzo", seed=3, momentum=0.9)
    for x, y in data:
        if how == "with":
            with reopened:
                train_batch(net_b, x, y)
        else:
            reopened.open()
            train_batch(net_b, x, y)
            reopened.close()
    assert reopened.steps == continuous.steps == 2 * T
    for (name, g_a), g_b in zip(grads(net_a).items(), grads(net_b).values()):
        assert torch.equal(g_a, g_b), name
    for name in continuous.feedback:
        assert torch.equal(continuous.feedback[name], reopened.feedback[name]), name


def test_opening_an_open_session_is_refused():
    net = net_fc()
    with opzo.train(net) as session:
        with pytest.raises(opzo.OpzoError, match="already open"):
            session.open()


# ------------------------------------------------------------------ forgetting the with
def test_a_session_used_without_with_explains_itself():
    net = net_fc()
    session = opzo.train(net, method="opzo")
    x, y = batches(1)[0]
    with pytest.warns(UserWarning, match=r"not open.*with opzo.train"):
        F.cross_entropy(net(x[0]), y).backward()
    functional.reset_net(net)
    session.open()  # once opened, the explanation is gone from the model
    session.close()
    assert not net._forward_pre_hooks


# ------------------------------------------------------------------ loading
def _trained_state(net, **options):
    with opzo.train(net, method="opzo", seed=3, momentum=0.9, **options) as session:
        for x, y in batches(2):
            train_batch(net, x, y)
        return session.state_dict(), {k: v.clone() for k, v in session.feedback.items()}


def _prefixed(state: dict, prefix: str) -> dict:
    """The state a session on ``torch.compile(net)`` saves: every layer name under ``prefix``."""
    out = dict(state)
    out["feedback"] = {sub: ({prefix + k: v for k, v in val.items()} if isinstance(val, dict) else val)
                       for sub, val in state["feedback"].items()}
    out["noise"] = {prefix + k: v for k, v in state["noise"].items()}
    return out


@pytest.mark.parametrize("discovered", [True, False])
def test_a_state_saved_under_torch_compile_names_maps_onto_the_model(discovered):
    state, _ = _trained_state(net_fc())
    x = batches(1)[0][0]
    results = []
    for saved in (state, _prefixed(state, "_orig_mod.")):
        net = net_fc()
        with opzo.train(net, method="opzo", seed=3, momentum=0.9, example_input=x[0] if discovered else None) as s:
            s.load_state_dict(saved)
            train_batch(net, *batches(1, seed=9)[0])  # discovery (if not yet) and one more batch
            results.append((s.steps, {k: v.clone() for k, v in s.feedback.items()}, grads(net)))
    (steps, feedback, g), (steps_mapped, feedback_mapped, g_mapped) = results
    assert steps == steps_mapped == 3 * T
    for name in feedback:
        assert torch.equal(feedback[name], feedback_mapped[name]), name  # M continued under the model's names
    for name in g:
        assert torch.equal(g[name], g_mapped[name]), name


def test_a_state_of_other_layers_is_refused_naming_them_and_changes_nothing():
    state, _ = _trained_state(net_fc())
    state = _prefixed(state, "encoder.")
    net = net_fc()
    with opzo.train(net, method="opzo", seed=3, momentum=0.9, example_input=batches(1)[0][0][0]) as s:
        train_batch(net, *batches(1)[0])
        before = copy.deepcopy(s.state_dict())
        with pytest.raises(opzo.OpzoError, match=r"encoder\.1.*model does not"):
            s.load_state_dict(state)
        after = s.state_dict()
        assert after["steps"] == before["steps"] == T
        for name, m in before["feedback"]["matrices"].items():
            assert torch.equal(after["feedback"]["matrices"][name], m)


def test_a_refused_load_leaves_the_session_as_it_was():
    state, _ = _trained_state(net_fc(hidden=20))  # another layer size: M of another shape
    net = net_fc()
    with opzo.train(net, method="opzo", seed=3, momentum=0.9) as s:
        train_batch(net, *batches(1)[0])
        before = copy.deepcopy(s.state_dict())
        with pytest.raises(opzo.OpzoError, match="has shape"):
            s.load_state_dict(state)
        after = s.state_dict()
        assert (after["steps"], after["epoch"], after["seed"]) == (before["steps"], before["epoch"], before["seed"])
        for name, m in before["feedback"]["matrices"].items():
            assert torch.equal(after["feedback"]["matrices"][name], m)
        for device, rng in before["generators"].items():
            assert torch.equal(after["generators"][device], rng)


def test_a_state_of_another_storage_is_refused_saying_which():
    state, _ = _trained_state(net_fc(), feedback_matrix="lowrank", feedback_rank=2)
    with opzo.train(net_fc(), method="opzo", feedback_matrix="dense") as s:
        with pytest.raises(opzo.OpzoError, match="feedback_matrix='lowrank'"):
            s.load_state_dict(state)


# ------------------------------------------------------------------ the user's optimizer
def test_local_readouts_leave_the_optimizer_when_the_session_closes():
    net = net_fc()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(5):
        with opzo.train(net, method="opzo", local=0.1, optimizer=optimizer, seed=0) as s:
            train_batch(net, *batches(1)[0], session=s, optimizer=optimizer)
            assert len(optimizer.param_groups) == 2
        assert len(optimizer.param_groups) == 1
    fresh = torch.optim.Adam(net.parameters(), lr=1e-3)
    fresh.load_state_dict(optimizer.state_dict())  # the optimizer of the model alone


# ------------------------------------------------------------------ copies of the model
def test_copies_of_the_model_inside_a_session_are_plain_models():
    net = net_fc()
    x, y = batches(1)[0]
    with opzo.train(net, method="opzo", seed=0) as s:
        train_batch(net, x, y)
        steps = s.steps
        twin = copy.deepcopy(net)
        ema = torch.optim.swa_utils.AveragedModel(net)
        buffer = io.BytesIO()
        torch.save(net, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        plain = net_fc()
        plain.load_state_dict(net.state_dict())
        for copied in (twin, ema.module, loaded):
            functional.reset_net(copied)
            out = torch.stack([copied(x[t]) for t in range(T)])
            functional.reset_net(plain)
            want = torch.stack([plain(x[t]) for t in range(T)])
            assert torch.equal(out, want)
            out.sum().backward()  # BPTT through the copy: nothing of the session is in it
        ema.update_parameters(net)
        assert s.steps == steps  # the copies never touched the session


# ------------------------------------------------------------------ inputs the methods cannot handle
@pytest.mark.parametrize("dtype, options", [
    (torch.float64, dict(method="opzo", feedback_matrix="bf16")),
    (torch.float16, dict(method="opzo", feedback_matrix="lowrank", feedback_rank=2)),
    (torch.bfloat16, dict(method="opzo", feedback_matrix="lowrank", feedback_rank=2)),
    (torch.float16, dict(method="dkp")),
])
def test_storage_and_precision_combinations_train_to_finite_values(dtype, options):
    net = net_fc().to(dtype)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with opzo.train(net, seed=0, momentum=0.9, **options) as s:
        for x, y in batches(3):
            train_batch(net, x.to(dtype), y, optimizer=optimizer)
        feedback = s.feedback
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert feedback and all(torch.isfinite(m).all() and m.abs().sum() > 0 for m in feedback.values())


def test_an_empty_batch_is_refused_clearly():
    net = net_fc()
    with opzo.train(net) as s:
        x, y = batches(1)[0]
        with pytest.raises(opzo.OpzoError, match="empty input of shape \\(0, 6\\).*drop_last"):
            net(x[0, :0])
        train_batch(net, x, y)  # the session goes on
        assert s.steps == T


def test_lags_with_a_backward_per_step_is_refused_clearly():
    net = net_fc()
    with opzo.train(net, method="opzo", lags=True, antithetic=False) as s:
        x, y = batches(1)[0]
        F.cross_entropy(net(x[0]), y).backward()
        with pytest.raises(opzo.OpzoError, match="lags=True.*one backward per sequence"):
            net(x[1])
        functional.reset_net(net)
        before = {k: v.clone() for k, v in s.feedback.items()}
        total = sum(F.cross_entropy(net(x[t]), y) for t in range(T))  # as lags=True needs it
        total.backward()
        assert all(not torch.equal(before[k], s.feedback[k]) for k in before)  # trains on


def test_gradient_alignment_keeps_batchnorm_statistics_of_the_real_pass():
    def conv_bn():
        torch.manual_seed(0)
        net = nn.Sequential(layer.Conv2d(1, 3, 3, padding=1), layer.BatchNorm2d(3),
                            neuron.IFNode(surrogate_function=surrogate.ATan()), layer.Flatten(),
                            layer.Linear(3 * 4 * 4, 4))
        return net

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(T, B, 1, 4, 4, generator=g) * 3, torch.randint(0, 4, (B,), generator=g)
    stats = []
    for measure in (False, True):
        net = conv_bn()
        with opzo.train(net, method="opzo", seed=0, example_input=x[0]) as s:
            def run_batch():
                functional.reset_net(net)
                for t in range(T):
                    F.cross_entropy(net(x[t]), y).backward()
            if measure:
                opzo.diagnostics.gradient_alignment(s, run_batch)
            else:
                run_batch()
        stats.append({k: v.clone() for k, v in net.state_dict().items() if "running" in k or "tracked" in k})
    for k in stats[0]:
        assert torch.equal(stats[0][k], stats[1][k]), k


# ------------------------------------------------------------------ DistributedDataParallel.join
def _join_worker(rank, init_file, out_file):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    net = net_fc()
    model = DistributedDataParallel(net)
    message = ""
    try:
        with opzo.train(net, method="opzo", seed=0), model.join():
            for x, y in batches(2 + rank):  # uneven: rank 1 has one batch more
                train_batch(model, x, y)
    except opzo.OpzoError as exc:
        message = str(exc)
    torch.save(message, f"{out_file}.{rank}")
    # DDP's forward under join() started an all-reduce whose handle its reducer keeps, never awaited:
    # release the wrapper while the process group is alive, or gloo may abort at teardown.
    del model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_join_is_refused_up_front_on_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_join_worker, args=(str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2, join=True)
    for rank in (0, 1):
        assert "join() (uneven inputs) cannot run a method='opzo'" in torch.load(tmp_path / f"out.{rank}")


# ------------------------------------------------------------------ the alpha schedule
def test_an_alpha_schedule_never_advanced_warns_on_close():
    net = net_fc()
    with pytest.warns(UserWarning, match=r"session.epoch was never advanced.*next_epoch"):
        with opzo.train(net, method="opzo", alpha=opzo.linear_alpha(0.2, 0.01, epochs=3)):
            train_batch(net, *batches(1)[0])


def test_next_epoch_advances_the_schedule_like_a_scheduler_step():
    import warnings

    net = net_fc()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once the epochs advance
        with opzo.train(net, method="opzo", alpha=opzo.linear_alpha(0.2, 0.01, epochs=3)) as s:
            alphas = [s.alpha]
            for x, y in batches(2):
                train_batch(net, x, y)
                alphas.append(s.next_epoch())
    assert alphas == pytest.approx([0.2, 0.105, 0.01]) and s.epoch == 2


def test_a_linear_alpha_schedule_is_saved_as_data():
    net = net_fc()
    with opzo.train(net, method="opzo", alpha=opzo.linear_alpha(0.2, 0.01, epochs=5)) as s:
        train_batch(net, *batches(1)[0])
        s.epoch = 0
        state = s.state_dict()
    assert state["config"]["alpha"] == {"schedule": "linear_alpha", "start": 0.2, "end": 0.01, "epochs": 5}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)  # plain data: loads without unpickling code

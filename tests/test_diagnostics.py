"""Firing rates and synaptic operations counted exactly on tiny networks."""
import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from opzo_ext.diagnostics import activity


def test_firing_rate_and_linear_synops():
    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(4, 6), neuron.IFNode(), layer.Linear(6, 3))
    spikes = []
    net[1].register_forward_hook(lambda m, a, out: spikes.append(out.detach()))
    x = torch.rand(5, 4) * 4
    with activity(net) as act, torch.no_grad():
        for _ in range(3):
            net(x)
    functional.reset_net(net)
    s = torch.stack(spikes)  # [3, 5, 6]
    assert act.firing_rates() == {"1": pytest.approx(s.mean().item())}
    # every spike into Linear(6, 3) reaches 3 targets; the analog input of layer 0 is not counted
    assert act.synops() == {"2": pytest.approx(3 * s.sum().item() / (3 * 5))}
    assert s.sum() > 0
    assert len(net[1]._forward_hooks) == 1 and not net[2]._forward_hooks  # only the test's own hook is left


def test_conv_fan_out_counts_borders_and_stride():
    conv = layer.Conv2d(1, 2, 3, padding=1)
    net = nn.Sequential(conv)
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1  # the centre reaches 2 channels x 9 positions
    with activity(net) as act, torch.no_grad():
        net(x)
    assert act.synops() == {"0": 18.0}
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 1  # a corner reaches 2 x 4
    with activity(net) as act, torch.no_grad():
        net(x)
    assert act.synops() == {"0": 8.0}
    strided = nn.Sequential(layer.Conv2d(1, 1, 2, stride=2))
    x = torch.ones(1, 1, 4, 4)  # each input pixel belongs to exactly one 2x2 window
    with activity(strided) as act, torch.no_grad():
        strided(x)
    assert act.synops() == {"0": 16.0}


@pytest.mark.parametrize("options, corner", [
    (dict(padding="same"), 8.0),  # as padding=1: 2 channels x 4 positions
    (dict(padding="valid"), 2.0),  # one output position: 2 channels x 1
    (dict(padding=1, padding_mode="circular"), 18.0),  # the corner wraps around to all 9 positions
])
def test_conv_fan_out_follows_padding_modes(options, corner):
    net = nn.Sequential(layer.Conv2d(1, 2, 3, **options))
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 1
    with activity(net) as act, torch.no_grad():
        net(x)
    assert act.synops() == {"0": corner}


def _setup(method):
    from spikingjelly.activation_based import surrogate

    import opzo_ext as opzo

    torch.manual_seed(0)
    sg = surrogate.Sigmoid(alpha=4.0)
    net = nn.Sequential(layer.Linear(6, 12), neuron.LIFNode(surrogate_function=sg), layer.Linear(12, 10),
                        neuron.LIFNode(surrogate_function=sg), layer.Linear(10, 3))
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[2].weight.mul_(3)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    session = opzo.train(net, method=method, seed=3, momentum=0.5, example_input=torch.rand(8, 6)).open()
    g = torch.Generator().manual_seed(4)
    batches = [(torch.rand(3, 8, 6, generator=g) * 2, torch.randint(0, 3, (8,), generator=g)) for _ in range(3)]
    return net, opt, session, batches


def _run(net, x, y):
    import torch.nn.functional as F

    functional.reset_net(net)
    for t in range(x.shape[0]):
        F.cross_entropy(net(x[t]), y).backward()


def test_gradient_alignment_of_bp_with_itself_is_one():
    from opzo_ext.diagnostics import gradient_alignment

    net, opt, session, batches = _setup("bp")
    x, y = batches[0]
    cos = gradient_alignment(session, lambda: _run(net, x, y))
    session.close()
    assert set(cos) == {"0.weight", "2.weight", "4.weight"}
    assert all(c == pytest.approx(1.0, abs=1e-5) for c in cos.values())
    import opzo_ext as opzo

    fresh = opzo.train(nn.Sequential(layer.Linear(2, 2), neuron.LIFNode(), layer.Linear(2, 2))).open()
    with pytest.raises(opzo.OpzoError, match="after the first training step"):
        gradient_alignment(fresh, lambda: None)
    fresh.close()


def test_gradient_alignment_does_not_disturb_training():
    from opzo_ext.diagnostics import gradient_alignment

    finals, cosines = [], []
    for monitor in (False, True):
        net, opt, session, batches = _setup("opzo")
        for x, y in batches:
            if monitor:
                cosines.append(gradient_alignment(session, lambda: _run(net, x, y)))
            else:
                _run(net, x, y)
            opt.step()
            opt.zero_grad()
        finals.append(({n: p.detach().clone() for n, p in net.named_parameters()},
                       {k: v.clone() for k, v in session.feedback.items()}, session.steps))
        session.close()
    (w0, m0, s0), (w1, m1, s1) = finals
    assert s0 == s1 and all(torch.equal(w0[k], w1[k]) for k in w0) and all(torch.equal(m0[k], m1[k]) for k in m0)
    for cos in cosines:  # the readout's gradient is exact in both: same forward, same error
        assert cos["4.weight"] == pytest.approx(1.0, abs=1e-5)
    last = cosines[-1]
    assert all(-1.0 - 1e-6 <= c <= 1.0 + 1e-6 for c in last.values()) and last["0.weight"] < 0.999


def test_gradient_variance_matches_the_papers_formula():
    from opzo_ext.diagnostics import GradientVariance

    net = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    variance = GradientVariance(net)
    g = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=g) for p in net.parameters()] for _ in range(5)]
    for batch in grads:
        for p, gr in zip(net.parameters(), batch):
            p.grad = gr.clone()
        variance.update()
    out = variance.result()
    assert set(out) == {"0.weight", "1.weight"}  # weights only
    for name, index in (("0.weight", 0), ("1.weight", 2)):
        stack = torch.stack([b[index] for b in grads])
        expected = ((stack - stack.mean(0)) ** 2).sum() / (5 * stack[0].numel())
        assert out[name] == pytest.approx(expected.item(), rel=1e-5)


def test_alignment_monitor_measures_every_nth_batch_and_logs_to_tensorboard(tmp_path):
    """The monitor's history equals gradient_alignment's on the measured batches, and the values
    written to TensorBoard are read back from the event file."""
    tensorboard = pytest.importorskip("tensorboard")  # noqa: F841 (the test extra installs it)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    from opzo_ext.diagnostics import AlignmentMonitor, gradient_alignment

    net, opt, session, batches = _setup("opzo")
    expected = []
    for b, (x, y) in enumerate(batches):  # reference: measure batches 0 and 2 by hand
        expected.append(gradient_alignment(session, lambda: _run(net, x, y)) if b % 2 == 0 else None)
        if b % 2:
            _run(net, x, y)
        opt.step()
        opt.zero_grad()
    reference = {n: p.detach().clone() for n, p in net.named_parameters()}
    session.close()

    net, opt, session, batches = _setup("opzo")
    writer = SummaryWriter(str(tmp_path))
    monitor = AlignmentMonitor(session, every=2, writer=writer)
    returned = []
    for x, y in batches:
        returned.append(monitor(lambda: _run(net, x, y)))
        opt.step()
        opt.zero_grad()
    writer.close()
    session.close()
    assert returned[1] is None and [b for b, _ in monitor.history] == [0, 2]
    assert [c for _, c in monitor.history] == [expected[0], expected[2]]
    assert all(torch.equal(reference[n], p) for n, p in net.named_parameters())
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {f"alignment/{n}" for n in expected[0]}
    logged = events.Scalars("alignment/0.weight")
    assert [e.step for e in logged] == [0, 2]
    assert [e.value for e in logged] == pytest.approx([expected[0]["0.weight"], expected[2]["0.weight"]], abs=1e-6)
    with pytest.raises(ValueError, match="every=0"):
        AlignmentMonitor(session, every=0)


def test_log_scalars_flattens_nested_dicts():
    from opzo_ext.diagnostics import log_scalars

    class Writer:
        def __init__(self):
            self.seen = []

        def add_scalar(self, tag, value, step):
            self.seen.append((tag, value, step))

    w = Writer()
    log_scalars(w, {"firing_rate": {"sn1": 0.25, "sn2": torch.tensor(0.5)}, "accuracy": 97}, step=7, prefix="val")
    assert w.seen == [("val/firing_rate/sn1", 0.25, 7), ("val/firing_rate/sn2", 0.5, 7), ("val/accuracy", 97.0, 7)]


@pytest.mark.parametrize("opened", ["inside", "before"])
def test_activity_counts_the_spikes_neurons_emit_inside_an_opzo_session(opened):
    """The session adds alpha * z to what hidden neurons pass on; activity() counts the spikes
    themselves (never negative), whether it is opened before the session or inside it."""
    import copy

    import torch.nn.functional as F

    import opzo_ext as opzo

    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(6, 12), neuron.LIFNode(), layer.Linear(12, 10), neuron.LIFNode(),
                        layer.Linear(10, 3))
    with torch.no_grad():
        net[0].weight.mul_(4)
        net[2].weight.mul_(4)
    plain = copy.deepcopy(net)
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(7, 8, 6, generator=g) * 3, torch.randint(0, 3, (8,), generator=g)
    emitted = {"1": [], "3": []}  # registered before the session: these hooks see the neurons' own output
    for name in emitted:
        net.get_submodule(name).register_forward_hook(lambda m, a, out, name=name: emitted[name].append(out.detach()))

    def run(model):
        functional.reset_net(model)
        for t in range(x.shape[0]):
            F.cross_entropy(model(x[t]), y).backward()  # one training step per time step

    # no antithetic pairs: z and -z on alternate steps would cancel in the sum over an even T
    session = opzo.train(net, method="opzo", seed=0, alpha=0.5, antithetic=False)
    if opened == "before":
        with activity(net) as act, session:
            run(net)
    else:
        with session:
            run(net)  # the first step discovers the layers and attaches the session's hooks
            with activity(net) as act:
                for name in emitted:
                    emitted[name].clear()
                run(net)
    rates = act.firing_rates()
    assert set(rates) == {"1", "3"} and all(0.01 < r < 1.0 for r in rates.values())
    for name, spikes in emitted.items():
        assert rates[name] == pytest.approx(torch.stack(spikes).mean().item(), abs=1e-7)
    # the first hidden layer sees the clean input: the same spikes as the model run without a session
    with activity(plain) as reference, torch.no_grad():
        functional.reset_net(plain)
        for t in range(x.shape[0]):
            plain(x[t])
    assert rates["1"] == pytest.approx(reference.firing_rates()["1"], abs=1e-7)
    assert "2" not in act.synops() and "2" in reference.synops()  # perturbed input: not counted in the session

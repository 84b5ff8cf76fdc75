"""Exact math on tiny networks: every gradient the session produces equals the formula of its
method, computed here by hand from recorded spikes, noise, membranes and outputs.

Network: x -> W0 -> LIF1 -> W1 -> LIF2 -> W2 -> o (snnTorch Leaky, beta=0.5, sigmoid surrogate),
T steps, CE loss and ``backward()`` at every step, float32 (snnTorch spikes are float32).
"""
import pytest
import snntorch as snn
import torch
import torch.nn.functional as F
from snntorch import surrogate
from torch import nn

import opzo_ext as opzo

T, B, ALPHA, SLOPE, BETA = 4, 3, 0.3, 4.0, 0.5


def make_net(seed=0):
    torch.manual_seed(seed)
    grad = surrogate.sigmoid(slope=SLOPE)
    net = nn.Sequential(
        nn.Linear(4, 6), snn.Leaky(beta=BETA, init_hidden=True, spike_grad=grad),
        nn.Linear(6, 5), snn.Leaky(beta=BETA, init_hidden=True, spike_grad=grad),
        nn.Linear(5, 3),
    )
    with torch.no_grad():
        net[0].weight.mul_(3.0)  # make the first layer spike often
        net[2].weight.mul_(3.0)
    return net


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, 4, generator=g, dtype=torch.float32) * 2, torch.tensor([0, 2, 1])


def snn_reset(net):
    """Start a new sequence (snnTorch: the library's reset of every neuron's state)."""
    for m in net.modules():
        if isinstance(m, snn.SpikingNeuron):
            m.reset_hidden()


def psi(mem):
    """snnTorch's sigmoid surrogate derivative at u - V_th (V_th = 1)."""
    s = torch.sigmoid(SLOPE * (mem - 1.0))
    return SLOPE * s * (1 - s)


class Recorder:
    """Hooks around the session's own: raw spikes/inputs (registered before the session) and what
    the session passed on (registered after), membranes, readout outputs and losses."""

    def __init__(self, net):
        self.net, self.log = net, {k: [] for k in ("s1", "s2", "p1", "p2", "in1", "in2", "in1p", "in2p", "m1", "m2", "o")}
        self.handles = []
        for i, k in ((1, "1"), (3, "2")):
            self.handles.append(net[i].register_forward_pre_hook(lambda m, a, k=k: self.log["in" + k].append(a[0].detach().clone())))
            self.handles.append(net[i].register_forward_hook(lambda m, a, out, k=k: self.log["s" + k].append(out.detach().clone())))

    def after_session(self):
        net = self.net
        for i, k in ((1, "1"), (3, "2")):
            self.handles.append(net[i].register_forward_pre_hook(lambda m, a, k=k: self.log["in" + k + "p"].append(a[0].detach().clone())))
            self.handles.append(net[i].register_forward_hook(lambda m, a, out, k=k: self._passed(k, m, out)))
        self.handles.append(net[4].register_forward_hook(lambda m, a, out: self.log["o"].append(out.detach().clone())))

    def _passed(self, k, module, out):
        self.log["p" + k].append(out.detach().clone())
        self.log["m" + k].append(module.mem.detach().clone())

    def close(self):
        for h in self.handles:
            h.remove()


def run(method, net, x, y, record_losses=None, **options):
    rec = Recorder(net)
    with opzo.train(net, method=method, example_input=x[0], seed=123, **options) as session:
        rec.after_session()
        start = {k: v.clone() for k, v in session.feedback.items()}
        losses = []
        for t in range(T):
            per_sample = F.cross_entropy(net(x[t]), y, reduction="none")
            session.loss(per_sample).backward()  # the mean loss; ZO keeps each sample's
            losses.append(per_sample.detach())
        final = {k: v.clone() for k, v in session.feedback.items()}
    rec.close()
    return rec.log, losses, start, final


def traces(seq, lam=BETA):
    out, a = [], torch.zeros_like(seq[0])
    for s in seq:
        a = lam * a + s
        out.append(a)
    return out


def expected_grads(log, x, y, deltas):
    """Weight/bias gradients of the three synapses from per-step hidden errors ``deltas``."""
    e = [(F.softmax(o, 1) - F.one_hot(y, 3)) / B for o in log["o"]]
    a1, a2 = traces(log["p1"]), traces(log["p2"])
    d1, d2 = deltas(e)
    return {
        "0.weight": sum(d1[t].t() @ x[t] for t in range(T)), "0.bias": sum(d1[t].sum(0) for t in range(T)),
        "2.weight": sum(d2[t].t() @ a1[t] for t in range(T)), "2.bias": sum(d2[t].sum(0) for t in range(T)),
        "4.weight": sum(e[t].t() @ a2[t] for t in range(T)), "4.bias": sum(e[t].sum(0) for t in range(T)),
    }


def assert_grads(net, expected):
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")


@pytest.mark.parametrize("inject, scale", [("after", "paper"), ("before", "paper"), ("after", "corrected"),
                                           ("before", "corrected"), ("after", "jacobian"), ("before", "jacobian")])
def test_opzo_gradients_and_momentum_closed_form(inject, scale):
    """M_l[t] = lam M_l[t-1] + (1 - lam) z_l[t]^T o[t] / B (/ alpha but for "paper") from M = 0; the
    hidden error is psi(u) * (e M_l[t]^T), divided by 1 - lam^(t+1) ("corrected") and times the
    reliability rho_l[t] = max(0, 1 - U_l[t] / |M_l[t]|^2) ("jacobian"), where
    U_l[t] = lam^2 U_l[t-1] + (1 - lam)^2 sum_b |z_b|^2 |o_b[t]|^2 / (B alpha)^2 for a fresh z and
    U_l[t] = lam^4 U_l[t-2] + (1 - lam)^2 sum_b |z_b|^2 |lam o_b[t-1] - o_b[t]|^2 / (B alpha)^2 for the
    second step of an antithetic pair."""
    net, (x, y), lam = make_net(), data(), 0.6
    log, _, _, final = run("opzo", net, x, y, alpha=ALPHA, momentum=lam, inject=inject, feedback_scale=scale)
    by = ALPHA if scale != "paper" else 1.0
    gain = [1 / (1 - lam ** (t + 1)) if scale != "paper" else 1.0 for t in range(T)]
    if inject == "after":
        z = {k: [(p - s) / ALPHA for p, s in zip(log["p" + k], log["s" + k])] for k in "12"}
    else:
        z = {k: [(a - b) / ALPHA for a, b in zip(log["in" + k + "p"], log["in" + k])] for k in "12"}
        assert all(torch.equal(p, s) for p, s in zip(log["p1"], log["s1"]))  # spikes pass clean
    assert all(zz.abs().max() > 0.1 for zz in z["1"])  # noise really is there
    # antithetic default: z, -z on alternate steps
    torch.testing.assert_close(z["1"][1], -z["1"][0])
    M = {k: [] for k in "12"}
    for k in "12":
        m = torch.zeros(z[k][0].shape[1], 3, dtype=torch.float32)
        for t in range(T):
            m = lam * m + (1 - lam) * z[k][t].t() @ log["o"][t] / (B * by)
            M[k].append(m)
    names = {"1": "1", "2": "3"}
    atol = 1e-6 if scale != "paper" else 1e-7  # M is 1/alpha larger; z is recovered as a difference / alpha
    for k in "12":
        torch.testing.assert_close(final[names[k]], M[k][-1], rtol=1e-5, atol=atol)
        closed = sum(lam ** (T - 1 - t) * (1 - lam) * z[k][t].t() @ log["o"][t] / (B * by) for t in range(T))
        torch.testing.assert_close(final[names[k]], closed, rtol=1e-5, atol=atol)

    gains = {k: list(gain) for k in "12"}
    if scale == "jacobian":
        for k in "12":
            u = [0.0]  # U before step 0, then after each step
            for t in range(T):
                o = log["o"][t]
                if t % 2 == 0:  # a fresh z
                    power = (z[k][t].square().sum(1) * o.square().sum(1)).sum() / (B * ALPHA) ** 2
                    u.append(lam ** 2 * u[-1] + (1 - lam) ** 2 * power)
                else:  # z = -z of step t - 1: the pair's noise is that of z^T (lam o~[t-1] - o~[t])
                    power = (z[k][t].square().sum(1) * (lam * log["o"][t - 1] - o).square().sum(1)).sum() / (B * ALPHA) ** 2
                    u.append(lam ** 4 * u[-2] + (1 - lam) ** 2 * power)
                gains[k][t] *= max(0.0, float(1 - u[-1] / M[k][t].square().sum()))
        assert any(g < 0.99 * c for k in "12" for g, c in zip(gains[k], gain))  # the shrinkage is at work

    def deltas(e):
        return ([psi(log["m1"][t]) * (e[t] @ M["1"][t].t()) * gains["1"][t] for t in range(T)],
                [psi(log["m2"][t]) * (e[t] @ M["2"][t].t()) * gains["2"][t] for t in range(T)])

    assert_grads(net, expected_grads(log, x, y, deltas))
    assert net[0].weight.grad.abs().max() > 1e-6  # the hidden layers really learn


@pytest.mark.parametrize("scale", ["paper", "corrected"])
def test_opzo_with_known_initial_M_and_scale_by_alpha(scale):
    """A loaded M after K = 7 earlier updates: the "corrected" feedback is divided by 1 - lam^(K+t+1)."""
    net, (x, y), lam, K = make_net(), data(), 0.9, 7
    g = torch.Generator().manual_seed(5)
    M0 = {"1": torch.randn(6, 3, generator=g, dtype=torch.float32), "3": torch.randn(5, 3, generator=g, dtype=torch.float32)}
    rec = Recorder(net)
    with opzo.train(net, method="opzo", example_input=x[0], alpha=ALPHA, momentum=lam, scale_by_alpha=True,
                    antithetic=False, noise="rademacher", feedback_scale=scale) as session:
        rec.after_session()
        state = session.state_dict()
        state["feedback"]["matrices"] = {k: v.clone() for k, v in M0.items()}
        state["feedback"]["updates"] = {"1": K, "3": K}
        session.load_state_dict(state)
        for t in range(T):
            F.cross_entropy(net(x[t]), y).backward()
    rec.close()
    log = rec.log
    z = {k: [(p - s) / ALPHA for p, s in zip(log["p" + k], log["s" + k])] for k in "12"}
    for zz in z["1"]:  # Rademacher: +-1
        torch.testing.assert_close(zz.abs(), torch.ones_like(zz))
    M = {}
    for k, name in (("1", "1"), ("2", "3")):
        m, M[k] = M0[name], []
        for t in range(T):
            m = lam * m + (1 - lam) * z[k][t].t() @ log["o"][t] / (B * ALPHA)
            M[k].append(m)
    gain = [1 / (1 - lam ** (K + t + 1)) if scale != "paper" else 1.0 for t in range(T)]

    def deltas(e):
        return ([psi(log["m1"][t]) * (e[t] @ M["1"][t].t()) * gain[t] for t in range(T)],
                [psi(log["m2"][t]) * (e[t] @ M["2"][t].t()) * gain[t] for t in range(T)])

    assert_grads(net, expected_grads(log, x, y, deltas))


def test_dfa_uses_fixed_B():
    net, (x, y) = make_net(), data()
    log, _, start, final = run("dfa", net, x, y)
    assert set(start) == {"1", "3"}
    for k in start:
        assert torch.equal(start[k], final[k])
    Bm = {"1": final["1"], "2": final["3"]}
    assert all(torch.equal(p, s) for p, s in zip(log["p1"], log["s1"]))  # no noise in DFA

    def deltas(e):
        return ([psi(log["m1"][t]) * (e[t] @ Bm["1"].t()) for t in range(T)],
                [psi(log["m2"][t]) * (e[t] @ Bm["2"].t()) for t in range(T)])

    assert_grads(net, expected_grads(log, x, y, deltas))


def test_zo_uses_each_samples_loss_times_its_noise():
    """Eq. 3 per sample: sample b of step t gets (L[t, b] / B) / alpha * z[t, b] (the mean loss
    weighs each sample's loss by 1 / B), not the batch loss times its noise."""
    net, (x, y) = make_net(), data()
    log, losses, _, final = run("zo", net, x, y, alpha=ALPHA)
    assert final == {}
    z = {k: [(p - s) / ALPHA for p, s in zip(log["p" + k], log["s" + k])] for k in "12"}
    assert all(len(set(l.tolist())) == B for l in losses)  # the samples' losses differ

    def deltas(e):
        return ([psi(log["m1"][t]) * (losses[t][:, None] / B / ALPHA * z["1"][t]) for t in range(T)],
                [psi(log["m2"][t]) * (losses[t][:, None] / B / ALPHA * z["2"][t]) for t in range(T)])

    assert_grads(net, expected_grads(log, x, y, deltas))


def test_zo_with_one_loss_over_the_sequence_uses_each_samples_summed_loss():
    """One backward per sequence: each step's noise meets the sample's loss over the sequence."""
    net, (x, y) = make_net(), data()
    rec = Recorder(net)
    with opzo.train(net, method="zo", example_input=x[0], seed=123, alpha=ALPHA) as session:
        rec.after_session()
        per_sample = sum(F.cross_entropy(net(x[t]), y, reduction="none") for t in range(T))
        session.loss(per_sample, reduction="sum").backward()
    rec.close()
    log = rec.log
    z = {k: [(p - s) / ALPHA for p, s in zip(log["p" + k], log["s" + k])] for k in "12"}
    total = per_sample.detach()[:, None]

    def deltas(e):
        return ([psi(log["m1"][t]) * (total / ALPHA * z["1"][t]) for t in range(T)],
                [psi(log["m2"][t]) * (total / ALPHA * z["2"][t]) for t in range(T)])

    expected = expected_grads(log, x, y, deltas)
    e_sum = [(F.softmax(o, 1) - F.one_hot(y, 3)) for o in log["o"]]  # the summed loss: no 1 / B
    a2 = traces(log["p2"])
    expected["4.weight"] = sum(e_sum[t].t() @ a2[t] for t in range(T))
    expected["4.bias"] = sum(e_sum[t].sum(0) for t in range(T))
    assert_grads(net, expected)


def test_zo_without_per_sample_losses_says_how_to_give_them():
    net, (x, y) = make_net(), data()
    with opzo.train(net, method="zo", example_input=x[0]) as session:
        with pytest.raises(opzo.OpzoError, match=r"session\.loss\(F\.cross_entropy\(out, y, reduction='none'\)\)"):
            F.cross_entropy(net(x[0]), y).backward()
        with pytest.raises(opzo.OpzoError, match=r"got 2 losses.*1 time step.*\[3\] samples"):
            session.loss(F.cross_entropy(net(x[1]), y, reduction="none")[:2])


def test_bp_is_online_spatial_bp_with_traces():
    net, (x, y) = make_net(), data()
    log, _, _, final = run("bp", net, x, y)
    assert final == {}
    assert all(torch.equal(p, s) for p, s in zip(log["p1"], log["s1"]))
    W1, W2 = net[2].weight.detach(), net[4].weight.detach()

    def deltas(e):
        d2 = [psi(log["m2"][t]) * (e[t] @ W2) for t in range(T)]
        return [psi(log["m1"][t]) * (d2[t] @ W1) for t in range(T)], d2

    assert_grads(net, expected_grads(log, x, y, deltas))


def test_no_spatial_bp_reaches_hidden_layers():
    """With zero feedback matrices the hidden weights get exactly zero gradient while the readout
    learns: nothing but the feedback reaches hidden layers (the formula tests above show the same
    for OPZO and ZO: their gradients contain no backpropagated term)."""
    net, (x, y) = make_net(), data()
    with opzo.train(net, method="dfa", example_input=x[0]) as session:
        F.cross_entropy(net(x[0]), y).backward()  # creates B
        state = session.state_dict()
        state["feedback"]["matrices"] = {k: torch.zeros_like(v) for k, v in state["feedback"]["matrices"].items()}
        session.load_state_dict(state)
        net.zero_grad()
        for t in range(1, T):
            F.cross_entropy(net(x[t]), y).backward()
    assert net[0].weight.grad.abs().max() == 0 and net[2].weight.grad.abs().max() == 0
    assert net[4].weight.grad.abs().max() > 0


def test_dkp_learns_B_with_one_adam_step_per_optimizer_step():
    """B_l starts at zero; each backward adds a_l[t]^T e[t] to its gradient; Adam steps once per
    optimizer step of the network, so every step of a batch feeds back with the same B."""
    net, (x, y) = make_net(), data()
    lr, batches = 1e-2, 2
    rec = Recorder(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0)  # weights fixed: the log holds every step
    with opzo.train(net, method="dkp", example_input=x[0], seed=123, dkp_lr=lr, optimizer=optimizer) as session:
        rec.after_session()
        seen = []
        for _ in range(batches):
            seen.append({k: v.clone() for k, v in session.feedback.items()})
            optimizer.zero_grad()
            for t in range(T):
                F.cross_entropy(net(x[t]), y).backward()
            optimizer.step()
            snn_reset(net)
        final = {k: v.clone() for k, v in session.feedback.items()}
    rec.close()
    log = rec.log
    e = [(F.softmax(o, 1) - F.one_hot(y, 3)) / B for o in log["o"]]
    act = {"1": traces(log["s1"][:T]) + traces(log["s1"][T:]), "3": traces(log["s2"][:T]) + traces(log["s2"][T:])}
    ref = {k: torch.zeros_like(v) for k, v in final.items()}
    opt = torch.optim.Adam(list(ref.values()), lr=lr)
    for k_batch in range(batches):
        for k in ref:
            torch.testing.assert_close(seen[k_batch][k], ref[k], rtol=1e-5, atol=1e-7)  # B used in batch k
            ref[k].grad = sum(act[k][i].t() @ e[i] for i in range(k_batch * T, (k_batch + 1) * T))
        opt.step()
    for k in ref:
        torch.testing.assert_close(final[k], ref[k], rtol=1e-5, atol=1e-7)
    used = seen[-1]

    last = {k: v[T:] for k, v in log.items() if len(v) == 2 * T}  # the last batch

    def deltas(e):  # its hidden errors, with B as it was during that batch
        return ([psi(last["m1"][t]) * (e[t] @ used["1"].t()) for t in range(T)],
                [psi(last["m2"][t]) * (e[t] @ used["3"].t()) for t in range(T)])

    expected = expected_grads(last, x, y, deltas)
    for name in ("0.weight", "2.weight"):
        torch.testing.assert_close(net.get_parameter(name).grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert net[0].weight.grad.abs().max() > 0  # learned feedback reaches the first layer


def test_dkp_without_the_optimizer_steps_once_per_sequence():
    net, (x, y) = make_net(), data()
    with opzo.train(net, method="dkp", example_input=x[0], seed=123, dkp_lr=1e-2) as session:
        for _ in range(2):
            for t in range(T):
                F.cross_entropy(net(x[t]), y).backward()
            first = {k: v.clone() for k, v in session.feedback.items()}
            snn_reset(net)
        # the second sequence started with one Adam step (sign-like, of size lr), not T of them
        assert all(0 < v.abs().max() <= 1e-2 * 1.0001 for v in first.values())
    assert session.method.optimizer.state[next(iter(session.method.matrices.values()))]["step"] == 2


@pytest.mark.parametrize("method", ["dfa", "none"])
def test_local_learning_adds_each_layers_readout_error(method):
    """local=c: layer l also receives c * dCE(R_l s_l, y)/ds_l = c * (softmax(r_l) - y) R_l / B
    through its own readout; here nothing else reaches the hidden layers: DFA's B is zero, and
    method 'none' (the control for local learning) sends no error from the output."""
    net, (x, y) = make_net(), data()
    c = 0.5
    rec = Recorder(net)
    with opzo.train(net, method=method, example_input=x[0], local=c) as session:
        rec.after_session()
        if method == "dfa":
            state = session.state_dict()
            state["feedback"]["matrices"] = {k: torch.zeros_like(v) for k, v in state["feedback"]["matrices"].items()}
            session.load_state_dict(state)
        else:
            assert session.feedback == {}
        readouts = {k: session.local_readouts[k] for k in ("1", "3")}
        assert [tuple(p.shape) for p in session.parameters()] == [(3, 6), (3,), (3, 5), (3,)]
        for t in range(T):
            (F.cross_entropy(net(x[t]), y) + session.local_loss(y)).backward()
    rec.close()
    log = rec.log
    R = {k: r.weight.detach() for k, r in readouts.items()}
    err = {k: [(F.softmax(readouts[k](s), 1) - F.one_hot(y, 3)).detach() / B
               for s in log["s1" if k == "1" else "s2"]] for k in R}

    def deltas(e):
        return ([psi(log["m1"][t]) * (c * err["1"][t] @ R["1"]) for t in range(T)],
                [psi(log["m2"][t]) * (c * err["3"][t] @ R["3"]) for t in range(T)])

    assert_grads(net, expected_grads(log, x, y, deltas))
    for k, s_key in (("1", "s1"), ("3", "s2")):  # the readouts learn from their own loss
        expected = sum(c * err[k][t].t() @ log[s_key][t] for t in range(T))
        torch.testing.assert_close(readouts[k].weight.grad, expected, rtol=1e-4, atol=1e-6)


def test_intermediate_global_learning():
    """igl='3': layer 1 gets OPZO feedback M_igl e_igl from the intermediate readout o_igl = R s_2
    (M_igl <- lam M_igl + (1-lam) z_1^T o_igl / B); layer 3 gets the global M_3 e plus the error
    of its own readout through R."""
    net, (x, y), lam = make_net(), data(), 0.6
    rec = Recorder(net)
    with opzo.train(net, method="opzo", example_input=x[0], alpha=ALPHA, momentum=lam, igl="3",
                    feedback_scale="paper") as session:
        rec.after_session()
        R = session.local_readouts["igl"]
        for t in range(T):
            (F.cross_entropy(net(x[t]), y) + session.local_loss(y)).backward()
        final = {k: v.clone() for k, v in session.feedback.items()}
    rec.close()
    log = rec.log
    z = {k: [(p - s) / ALPHA for p, s in zip(log["p" + k], log["s" + k])] for k in "12"}
    o_igl = [R(s).detach() for s in log["s2"]]
    e_igl = [(F.softmax(o, 1) - F.one_hot(y, 3)) / B for o in o_igl]
    M1, M3 = [], []
    m1, m3 = torch.zeros(6, 3), torch.zeros(5, 3)
    for t in range(T):
        m1 = lam * m1 + (1 - lam) * z["1"][t].t() @ o_igl[t] / B
        m3 = lam * m3 + (1 - lam) * z["2"][t].t() @ log["o"][t] / B
        M1.append(m1)
        M3.append(m3)
    torch.testing.assert_close(final["1"], M1[-1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(final["3"], M3[-1], rtol=1e-5, atol=1e-7)
    W_R = R.weight.detach()

    def deltas(e):
        return ([psi(log["m1"][t]) * (e_igl[t] @ M1[t].t()) for t in range(T)],
                [psi(log["m2"][t]) * (e[t] @ M3[t].t() + e_igl[t] @ W_R) for t in range(T)])

    assert_grads(net, expected_grads(log, x, y, deltas))
    with pytest.raises(opzo.OpzoError, match="igl='1' is not a hidden neuron layer after the first"):
        opzo.train(make_net(), method="opzo", igl="1", example_input=x[0]).open()


def test_opzo_with_lags_feeds_every_earlier_step_and_keeps_each_layers_bptt():
    """lags=True (appendix E.2): one backward per sequence; the spikes of layer l at step j receive
    sum_{t >= j} e[t] @ M_l^(t-j)^T, with M^(k) <- lam M^(k) + (1-lam) z[t-k]^T o[t] / B at step t;
    each layer's membrane keeps its path through time (BPTT within the layer), spatial BP stays cut,
    weight gradients use the (perturbed) spikes, not traces. Reference: autograd on the same
    network run by hand with those signals injected at the spikes."""
    net, (x, y), lam = make_net(), data(), 0.6
    reference = make_net()  # the same initial weights
    rec = Recorder(net)
    with opzo.train(net, method="opzo", lags=True, antithetic=False, example_input=x[0], alpha=ALPHA,
                    momentum=lam, feedback_scale="paper") as session:
        rec.after_session()
        loss = sum(F.cross_entropy(net(x[t]), y) for t in range(T))
        loss.backward()
        final = {k: v.clone() for k, v in session.feedback.items()}
    rec.close()
    log = rec.log
    assert set(final) == {"1", "3"} | {f"{n}@{k}" for n in ("1", "3") for k in range(1, T)}
    z = {k: [(p - s) / ALPHA for p, s in zip(log["p" + k], log["s" + k])] for k in "12"}
    e = [(F.softmax(o, 1) - F.one_hot(y, 3)) / B for o in log["o"]]
    M = {}  # (layer, k, t) -> M^(k) after the update of step t
    for layer, n in (("1", 6), ("2", 5)):
        for k in range(T):
            m = torch.zeros(n, 3)
            for t in range(k, T):
                m = lam * m + (1 - lam) * z[layer][t - k].t() @ log["o"][t] / B
                M[layer, k, t] = m
    torch.testing.assert_close(final["3@2"], M["2", 2, T - 1], rtol=1e-5, atol=1e-7)
    signal = {layer: [sum(e[t] @ M[layer, t - j, t].t() for t in range(j, T)) for j in range(T)] for layer in "12"}

    total = 0.0  # the reference: spikes detached between layers, states kept through time
    for t in range(T):
        s1 = reference[1](reference[0](x[t]))
        s2 = reference[3](reference[2](s1.detach() + ALPHA * z["1"][t]))
        o = reference[4](s2.detach() + ALPHA * z["2"][t])
        total = total + F.cross_entropy(o, y) + (signal["1"][t] * s1).sum() + (signal["2"][t] * s2).sum()
    total.backward()
    expected = {name: p.grad for name, p in reference.named_parameters()}
    assert_grads(net, expected)
    # the within-layer path matters: without it (state detached every step) layer 1's gradient differs
    truncated = sum((psi(log["m1"][j]) * signal["1"][j]).t() @ x[j] for j in range(T))
    assert not torch.allclose(net[0].weight.grad, truncated, rtol=1e-3, atol=1e-5)
    with pytest.raises(opzo.ConfigError, match="lags=True needs independent noise.*antithetic=False"):
        opzo.TrainConfig(method="opzo", lags=True)
    with pytest.raises(opzo.ConfigError, match="lags=True.*method='opzo'"):
        opzo.TrainConfig(method="dfa", lags=True)


def test_zo_follows_the_scale_applied_after_session_loss():
    """(c * session.loss(l)).backward(): the readout's gradient scales by c, and so must ZO's
    hidden signal, whose loss weight is read in backward."""
    x, y = data()
    grads = []
    for c in (1.0, 3.0):
        net = make_net()
        with opzo.train(net, method="zo", example_input=x[0], seed=123, alpha=ALPHA) as session:
            for t in range(T):
                (c * session.loss(F.cross_entropy(net(x[t]), y, reduction="none"))).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], 3.0 * grads[0][name], rtol=1e-4, atol=1e-5, msg=name)

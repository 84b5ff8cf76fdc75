"""feedback_matrix='bf16' and 'lowrank': OPZO's M in half the bytes, or as a rank-r product."""
import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

import opzo_ext as opzo
from opzo_ext.feedback.storage import Bf16, LowRank, round_stochastic
from opzo_ext.models import nf_resnet34

T, B, N_IN, N_HID, M_OUT = 4, 8, 6, 12, 5


def fc_net(step_mode="s"):
    torch.manual_seed(0)
    sg = surrogate.Sigmoid(alpha=4.0)
    net = nn.Sequential(layer.Linear(N_IN, N_HID), neuron.LIFNode(surrogate_function=sg),
                        layer.Linear(N_HID, N_HID), neuron.LIFNode(surrogate_function=sg),
                        layer.Linear(N_HID, M_OUT))
    functional.set_step_mode(net, step_mode)
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[2].weight.mul_(3)
    return net


def data(batches=1, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(T, B, N_IN, generator=g) * 2, torch.randint(0, M_OUT, (B,), generator=g))
            for _ in range(batches)]


def run(layout, batches, multistep=False, **options):
    """Gradients of the last batch and the final feedback matrices (fixed weights)."""
    net = fc_net("m" if multistep else "s")
    with opzo.train(net, method="opzo", feedback_matrix=layout, seed=1, momentum=0.9, **options) as s:
        for x, y in data(batches):
            net.zero_grad()
            if multistep:
                F.cross_entropy(net(x).flatten(0, 1), y.repeat(T)).backward()
            else:
                for t in range(T):
                    F.cross_entropy(net(x[t]), y).backward()
            functional.reset_net(net)
        return {n: p.grad.clone() for n, p in net.named_parameters()}, \
            {k: v.float().clone() for k, v in s.feedback.items()}, s


# ---------------------------------------------------------------- bf16
def test_stochastic_rounding_is_unbiased_and_exact_on_bf16_values():
    g = torch.Generator().manual_seed(0)
    for x0 in (1 + 2 ** -10, -(1 + 2 ** -10), 3e-20 * (1 + 2 ** -9)):
        x = torch.full((200_000,), x0)
        r = round_stochastic(x.clone(), g)
        assert r.dtype == torch.bfloat16
        values = set(r.float().unique().tolist())
        assert len(values) == 2  # the two neighbours
        ulp = abs(x0) * 2 ** -7
        assert abs(r.double().mean().item() - x0) < 0.02 * ulp  # std of the mean ~ 0.0007 ulp
        assert abs(r.float().eq(torch.tensor(x0).bfloat16().float()).float().mean().item() - 1) > 0.05
    exact = torch.randn(1000).bfloat16().float()
    assert torch.equal(round_stochastic(exact.clone(), g).float(), exact)


def test_bf16_update_tracks_float32_where_round_to_nearest_stalls():
    """lam = 0.9999: each update is 1e-4 of M, below bf16's resolution (2^-8 = 0.4%)."""
    g = torch.Generator().manual_seed(0)
    m_out, n, lam, steps = 4, 64, 0.9999, 3000
    method = Bf16(lambda device: g)
    ref = torch.ones(m_out, n)  # M^T, float32 reference
    sr, rne = ref.bfloat16(), ref.bfloat16()
    o, z = torch.ones(1, m_out), torch.full((1, n), 2.0)  # the target of the recursion: 2
    for _ in range(steps):
        ref = torch.addmm(ref, o.t(), z, beta=lam, alpha=1 - lam)
        sr = method.update(sr, o, z, lam, 1 - lam, in_place=True)
        rne = torch.addmm(rne.float(), o.t(), z, beta=lam, alpha=1 - lam).bfloat16()
    assert sr.dtype == torch.bfloat16
    assert 1.25 < ref.mean() < 1.27  # 2 - exp(-0.3)
    assert abs(sr.float().mean() - ref.mean()) < 0.01  # mean over 256 entries
    # each entry random-walks by ~sqrt(steps * p) ulps (p ~ 1% per step): about 0.04 here
    assert (sr.float() - ref).std() < 0.06
    assert torch.all(rne.float() == 1.0)  # round to nearest never moves


def test_bf16_session_stores_half_and_follows_dense():
    grads_d, fb_d, _ = run("dense", 6)
    grads_h, fb_h, s = run("bf16", 6)
    assert all(m.dtype == torch.bfloat16 for m in s.method.matrices.values())
    for name in fb_d:
        assert F.cosine_similarity(fb_h[name].flatten(), fb_d[name].flatten(), dim=0) > 0.999
    for name in ("0.weight", "2.weight"):
        assert F.cosine_similarity(grads_h[name].flatten(), grads_d[name].flatten(), dim=0) > 0.99
    torch.testing.assert_close(grads_h["4.weight"], grads_d["4.weight"])  # the readout: exact BP


def test_bf16_resume_is_bit_identical():
    """The rounding bits come from the session's generator, which the state holds."""
    net = fc_net()
    (x, y), = data()

    def sequence():
        for t in range(T):
            F.cross_entropy(net(x[t]), y).backward()
        functional.reset_net(net)

    with opzo.train(net, method="opzo", feedback_matrix="bf16", seed=3) as s:
        sequence()
        state = torch.load(_save(s.state_dict()), weights_only=False)
        sequence()
        first = {k: v.clone() for k, v in s.feedback.items()}
        s.load_state_dict(state)
        sequence()
        assert all(torch.equal(first[k], v) for k, v in s.feedback.items())
        assert not all(torch.equal(state["feedback"]["matrices"][k], v) for k, v in s.feedback.items())


def _save(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


# ---------------------------------------------------------------- lowrank
@pytest.mark.parametrize("multistep", [False, True])
def test_lowrank_with_rank_at_least_m_equals_dense(multistep):
    grads_d, fb_d, _ = run("dense", 3, multistep)
    grads_l, fb_l, s = run("lowrank", 3, multistep, feedback_rank=M_OUT)
    for name in fb_d:
        torch.testing.assert_close(fb_l[name], fb_d[name], rtol=1e-4, atol=1e-7)
    for name in grads_d:
        torch.testing.assert_close(grads_l[name], grads_d[name], rtol=1e-4, atol=1e-6, msg=name)
    a, b = s.method.matrices["1"]
    assert a.shape == (N_HID, M_OUT) and b.shape == (M_OUT, M_OUT)


def test_lowrank_update_is_the_best_rank_r_approximation():
    g = torch.Generator().manual_seed(0)
    n, m, r, lam, scale = 30, 9, 3, 0.8, 0.25
    method = LowRank(r)
    factors = method.zeros((n, m), torch.zeros(1))
    dense = torch.zeros(n, m)
    for i in range(4):
        o, z = torch.randn(2, m, generator=g), torch.randn(2, n, generator=g)
        target = lam * factors[0] @ factors[1].t() + scale * z.t() @ o
        factors = method.truncate(factors, o, z, lam, scale)
        u, sv, vh = torch.linalg.svd(target.double())
        best = (u[:, :r] * sv[:r]) @ vh[:r]
        torch.testing.assert_close((factors[0] @ factors[1].t()).double(), best, rtol=1e-4, atol=1e-5)
        a, b = factors
        k = min(r, 2 * (i + 1))  # rank 2 per step until r is reached
        assert a.shape == (n, k) and b.shape == (m, k)
        torch.testing.assert_close(b.t() @ b, torch.eye(k), atol=1e-5, rtol=0)
        dense = lam * dense + scale * z.t() @ o
    # after several cuts, still close to the dense recursion in its leading directions
    assert F.cosine_similarity((factors[0] @ factors[1].t()).flatten(), dense.flatten(), dim=0) > 0.8


def test_lowrank_rank_below_m_trains_and_resumes():
    grads_d, fb_d, _ = run("dense", 3)
    grads_l, fb_l, s = run("lowrank", 3, feedback_rank=2, feedback_scale="corrected")  # every layer gets feedback
    for name in fb_l:
        assert torch.linalg.matrix_rank(fb_l[name]) == 2
    assert all(grads_l[n].abs().max() > 0 for n in grads_l)
    state = torch.load(_save(s.state_dict()), weights_only=False)
    net = fc_net()
    with opzo.train(net, method="opzo", feedback_matrix="lowrank", feedback_rank=2, feedback_scale="corrected",
                    example_input=torch.rand(B, N_IN)) as s2:
        s2.load_state_dict(state)
        for name in fb_l:
            torch.testing.assert_close(s2.feedback[name], fb_l[name])


# ---------------------------------------------------------------- sizes and bad input
def test_sizes_for_nf_resnet34_at_224_are_checked_before_allocating():
    """2,935,296 hidden neurons in 32 layers, 1000 classes: bf16 = 2 bytes x 2.94e9 entries;
    rank 64 = 4 bytes x 64 x (2,935,296 + 32 x 1000)."""
    net, x = nf_resnet34(num_classes=1000), torch.rand(1, 3, 224, 224)
    with pytest.raises(opzo.OpzoError, match=r"5\.87 GB \(2,935,296,000 entries.*'lowrank'.*'bf16'"):
        opzo.train(net, method="opzo", feedback_matrix="bf16", max_feedback_gb=4, example_input=x).open()
    with pytest.raises(opzo.OpzoError, match=r"0\.76 GB \(189,906,944 entries"):
        opzo.train(net, method="opzo", feedback_matrix="lowrank", max_feedback_gb=0.5, example_input=x).open()
    with opzo.train(net, method="opzo", feedback_matrix="lowrank", example_input=x) as s:
        assert len(s.layers) == 32 and all(a.shape[1] == 0 for a, _ in s.method.matrices.values())


@pytest.mark.parametrize("options,match", [
    (dict(method="dfa", feedback_matrix="bf16"), "needs method='opzo'"),
    (dict(method="opzo", feedback_matrix="lowrank", lags=True, antithetic=False), "without lags"),
    (dict(method="opzo", feedback_matrix="lowrank", feedback_rank=0), "feedback_rank=0 must be a positive"),
    (dict(method="opzo", feedback_matrix="half"), "'bf16', 'lowrank'"),
    (dict(method="opzo", feedback_matrix="channel", lags=True, antithetic=False), "without lags"),
])
def test_bad_storage_options_are_refused(options, match):
    with pytest.raises(opzo.ConfigError, match=match):
        opzo.TrainConfig(**options)

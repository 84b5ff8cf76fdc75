"""Two CPU processes (gloo, DDP) hold the same M and weights after every step, equal to one process
training on the concatenated global batch with the same per-rank noise."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import opzo_ext as opzo
from opzo_ext.noise import NoiseSource

T, B, STEPS, SEED = 3, 4, 3, 11
LOWRANK = {"feedback_matrix": "lowrank", "feedback_rank": 2}


def make(hidden=16, classes=3):
    from spikingjelly.activation_based import layer, neuron, surrogate

    torch.manual_seed(0)
    net = nn.Sequential(layer.Linear(5, hidden), neuron.LIFNode(surrogate_function=surrogate.Sigmoid(alpha=4.0)),
                        layer.Linear(hidden, 12), neuron.LIFNode(surrogate_function=surrogate.Sigmoid(alpha=4.0)),
                        layer.Linear(12, classes))
    with torch.no_grad():
        net[0].weight.mul_(3)
        net[2].weight.mul_(3)
    return net


def data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(STEPS, T, 2 * B, 5, generator=g) * 2, torch.randint(0, 3, (STEPS, 2 * B), generator=g)


def train(net, model, x, y, session_kwargs, patch=None, record=None, readouts=False, factors=False):
    from spikingjelly.activation_based import functional

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with opzo.train(net, method="opzo", seed=SEED, momentum=0.5, example_input=x[0, 0], optimizer=opt,
                    **session_kwargs) as s:
        if patch:
            patch(s)
        for step in range(STEPS):
            for t in range(T):
                loss = F.cross_entropy(model(x[step, t]), y[step])
                (loss + s.local_loss(y[step]) if readouts else loss).backward()
            opt.step()
            opt.zero_grad()
            functional.reset_net(net)
            if record is not None:
                weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
                weights.update({f"readout.{k}": v.detach().clone() for k, v in s.local_readouts.state_dict().items()})
                feedback = {f"{k}.{i}": f.clone() for k, v in s.method.matrices.items() for i, f in enumerate(v)} \
                    if factors else {k: v.clone() for k, v in s.feedback.items()}
                record.append((feedback, weights))


def worker(rank, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x, y = data()
    net = make()
    record = []
    mine = x[:, :, rank * B:(rank + 1) * B], y[:, rank * B:(rank + 1) * B]
    train(net, DistributedDataParallel(net), *mine, {}, record=record)
    net, bf16 = make(), []  # M in bfloat16: the ranks must round identically
    train(net, DistributedDataParallel(net), *mine, {"feedback_matrix": "bf16"}, record=bf16)
    torch.manual_seed(rank)  # the session's local readouts start from rank 0's weights anyway
    net, local = make(), []
    train(net, DistributedDataParallel(net), *mine, {"local": 0.5}, record=local, readouts=True)
    net, lowrank = make(), []  # rank 2 < m = 3: each rank truncates the global batch
    train(net, DistributedDataParallel(net), *mine, LOWRANK, record=lowrank, factors=True)
    # 64 and 12 neurons, 10 outputs, global batch 8: gathering the factors o~, z costs 8 x (10 + rows)
    # numbers, less than all-reducing the 10 x rows product (twice its size), so the ranks gather
    net, gathered = make(hidden=64, classes=10), []
    train(net, DistributedDataParallel(net), *mine, {}, record=gathered)
    torch.save({"dense": record, "bf16": bf16, "local": local, "lowrank": lowrank, "gathered": gathered},
               f"{out_file}.{rank}")
    dist.destroy_process_group()


class TwoRankNoise:
    """Noise of the global batch as the two ranks draw it: rank r's seed for rows r*B:(r+1)*B."""

    def __init__(self, source: NoiseSource):
        self.ranks = [NoiseSource(source.distribution, source.antithetic, source.seed + 1_000_003 * r) for r in (0, 1)]

    def draw(self, like, steps, fresh):
        return torch.cat([src.draw(like[r * B:(r + 1) * B], steps, fresh) for r, src in enumerate(self.ranks)])


def assert_ranks_equal_one_process(rank0, rank1, single, m_rtol=1e-5, m_atol=5e-7):  # M: 1/alpha the paper's
    """Per step: M (or its factors) and weights bit-identical on both ranks, and close to one process."""
    for step in range(STEPS):
        (m0, w0), (m1, w1), (ms, ws) = rank0[step], rank1[step], single[step]
        for k in m0:
            assert torch.equal(m0[k], m1[k]), (step, k)
            torch.testing.assert_close(m0[k], ms[k], rtol=m_rtol, atol=m_atol)
        for k in w0:
            assert torch.equal(w0[k], w1[k]), (step, k)
            torch.testing.assert_close(w0[k], ws[k], rtol=1e-4, atol=1e-6)


def test_two_processes_match_each_other_and_one_process(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path / "rec")), nprocs=2, join=True)
    out0, out1 = (torch.load(tmp_path / f"rec.{r}", weights_only=True) for r in (0, 1))
    rank0 = out0["dense"]

    def patch(session):
        for rec in session.flow.neurons.values():
            rec.noise = TwoRankNoise(rec.noise)

    def one_process(options, **net_options):
        net, record = make(**net_options), []
        train(net, net, x, y, options, patch=patch, record=record, factors="feedback_rank" in options)
        return record

    x, y = data()
    assert_ranks_equal_one_process(rank0, out1["dense"], one_process({}))
    assert all(v.abs().sum() > 0 for v in rank0[-1][0].values())
    for step in range(STEPS):  # bf16 M: identical on both ranks, close to the float32 M
        (m0, w0), (m1, w1), (md, _) = out0["bf16"][step], out1["bf16"][step], rank0[step]
        for k in m0:
            assert m0[k].dtype == torch.bfloat16 and torch.equal(m0[k], m1[k]), (step, k)
            assert F.cosine_similarity(m0[k].float().flatten(), md[k].flatten(), dim=0) > 0.99
        assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # low rank: the same factors on both ranks as in one process
    assert set(out0["lowrank"][0][0]) == {"1.0", "1.1", "3.0", "3.1"} and out0["lowrank"][0][0]["1.0"].shape == (16, 2)
    assert_ranks_equal_one_process(out0["lowrank"], out1["lowrank"], one_process(LOWRANK), 1e-4, 1e-6)
    for (m0, w0), (m1, w1) in zip(out0["local"], out1["local"]):  # local readouts: shared and averaged
        assert any(k.startswith("readout.") for k in w0)
        assert all(torch.equal(w0[k], w1[k]) for k in w0) and all(torch.equal(m0[k], m1[k]) for k in m0)
    # dense M from all-gathered factors
    assert out0["gathered"][0][0]["1"].shape == (64, 10)
    assert_ranks_equal_one_process(out0["gathered"], out1["gathered"], one_process({}, hidden=64, classes=10))


def test_the_cheaper_exchange_is_chosen(monkeypatch):
    """All-gather the factors when B (m + rows) < 2 m rows, else all-reduce the product; each step's
    o~ is gathered once for all layers."""
    from opzo_ext.feedback import storage as opzo_module

    calls = []
    monkeypatch.setattr(opzo_module, "world", lambda: (0, 2))
    monkeypatch.setattr(opzo_module, "all_gather_rows", lambda t: calls.append(t.shape) or torch.cat([t, t]))
    o, z, gathered = torch.ones(1, 4, 10), torch.ones(4, 64), {}
    o_all, z_all, reduce = opzo_module.Dense.exchange(o, 0, z, 8, gathered)  # 8 x 74 < 2 x 640
    assert not reduce and o_all.shape == (8, 10) and z_all.shape == (8, 64)
    o_again, _, _ = opzo_module.Dense.exchange(o, 0, z[:, :32], 8, gathered)  # a second layer: o~ reused
    assert o_again is o_all and calls == [(4, 10), (4, 64), (4, 32)]
    o_own, z_own, reduce = opzo_module.Dense.exchange(o, 0, z[:, :3], 8, gathered)  # 8 x 13 > 2 x 30
    assert reduce and o_own.shape == (4, 10) and o_own.data_ptr() == o.data_ptr() and z_own.shape == (4, 3)

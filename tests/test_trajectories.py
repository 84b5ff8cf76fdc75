"""Training stays bit-identical: every method and feedback layout, on snnTorch and SpikingJelly, FC and
conv, single- and multi-step, against trajectories recorded before the core was restructured
(``tests/trajectories.py`` says how to record them again after a deliberate change). The record is
this kind of CPU's, where there is one: float32 kernels of other instruction sets round differently."""
import pytest
import torch

from tests.trajectories import cases, cpu_kind, reference_path, run_case

CASES = cases()


@pytest.fixture(scope="module")
def reference():
    return torch.load(reference_path(), weights_only=True)


def test_every_case_is_recorded(reference):
    assert sorted(reference) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_is_bit_identical(name, reference):
    want, got = reference[name], run_case(*CASES[name])
    assert sorted(got) == sorted(want), f"{name}: recorded tensors differ"
    changed = [k for k in want if want[k].dtype != got[k].dtype or not torch.equal(want[k], got[k])]
    assert not changed, (f"{name}: {len(changed)} tensors differ from {reference_path().name} (this CPU: "
                         f"{cpu_kind()}), e.g. {changed[:5]}")

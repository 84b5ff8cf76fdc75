"""Training stays bit-identical: every method and feedback layout, on snnTorch and SpikingJelly, FC and
conv, single- and multi-step, against trajectories recorded before the core was restructured
(``tests/trajectories.py`` says how to record them again after a deliberate change)."""
import pytest
import torch

from tests.trajectories import REFERENCE, cases, run_case

CASES = cases()


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE, weights_only=True)


def test_every_case_is_recorded(reference):
    assert sorted(reference) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_is_bit_identical(name, reference):
    want, got = reference[name], run_case(*CASES[name])
    assert sorted(got) == sorted(want), f"{name}: recorded tensors differ"
    changed = [k for k in want if want[k].dtype != got[k].dtype or not torch.equal(want[k], got[k])]
    assert not changed, f"{name}: {len(changed)} tensors differ, e.g. {changed[:5]}"

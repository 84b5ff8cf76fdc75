"""Training stays bit-identical: every method and feedback layout, on snnTorch and SpikingJelly, FC and
conv, single- and multi-step, against trajectories recorded before the core was restructured
(``tests/trajectories.py`` says how to record them again after a deliberate change). The record is
this kind of CPU's, where there is one: float32 kernels of other instruction sets round differently.
On a kind without one, the first record is matched within ``ROUNDING`` (each float tensor's largest
difference over its largest magnitude; between the two recorded kinds it is at most 5e-4, while a
change of the math moves trajectories by far more), other tensors exactly."""
import pytest
import torch

from tests.trajectories import cases, cpu_kind, record_path, reference_path, run_case

CASES = cases()
ROUNDING = 1e-2


@pytest.fixture(scope="module")
def reference():
    return torch.load(reference_path(), weights_only=True)


def test_every_case_is_recorded(reference):
    assert sorted(reference) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_trajectory_is_bit_identical(name, reference):
    want, got = reference[name], run_case(*CASES[name])
    assert sorted(got) == sorted(want), f"{name}: recorded tensors differ"
    exact = record_path().exists()
    changed = [k for k in want if want[k].dtype != got[k].dtype or not _same(want[k], got[k], exact)]
    how = "" if exact else f" by more than float rounding ({ROUNDING:g}; no record for this kind of CPU)"
    assert not changed, (f"{name}: {len(changed)} tensors differ from {reference_path().name}{how} (this CPU: "
                         f"{cpu_kind()}), e.g. {changed[:5]}")


def _same(want: torch.Tensor, got: torch.Tensor, exact: bool) -> bool:
    if exact or not want.dtype.is_floating_point or not want.numel():
        return torch.equal(want, got)
    scale = want.double().abs().max().clamp_min(1e-12)
    return bool((want.double() - got.double()).abs().max() <= ROUNDING * scale)

"""Packaging: one version, the licence, the extras, the tested minimum versions, and a core that
imports and reports missing libraries clearly with only torch installed.

The "only torch" runs are subprocesses whose ``sys.meta_path`` starts with a finder that refuses the
optional packages, as if they were not installed.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import opzo_ext
from opzo_ext import _optional

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
OPTIONAL = sorted(_optional.EXTRAS)  # snntorch, spikingjelly and the [data] packages


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text.split("+")[0]))


def _lower_bounds() -> dict[str, str]:
    """distribution -> its declared minimum, over the dependencies and the library/data extras."""
    reqs = list(PROJECT["dependencies"])
    for extra in ("snntorch", "spikingjelly", "data"):
        reqs += PROJECT["optional-dependencies"][extra]
    bounds = {}
    for req in reqs:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", req.strip())
        assert m, f"{req!r}: every library and data dependency declares a lower bound (name>=version)"
        bounds[m.group(1).lower()] = m.group(2)
    return bounds


# --------------------------------------------------------------------------- version


def test_version_is_single_sourced():
    """pyproject.toml holds the version; the package, CITATION.cff and CHANGELOG.md follow it."""
    version = PROJECT["version"]
    assert opzo_ext.__version__ == importlib.metadata.version("opzo_ext") == version, (
        "the installed metadata is stale: rerun bash scripts/setup.sh")
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(rf"^version: {re.escape(version)}$", cff, re.M), "CITATION.cff's version"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## [{version}]" in changelog and "## [Unreleased]" in changelog


# --------------------------------------------------------------------------- licence and citation


def test_licence():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    assert importlib.metadata.metadata("opzo_ext")["License-Expression"] == "MIT"


def test_citation_cites_the_paper():
    cff = (ROOT / "CITATION.cff").read_text()
    assert cff.startswith("cff-version: 1.2.0\n")
    for key in ("message", "title", "authors", "version", "license", "references"):
        assert re.search(rf"^{key}:", cff, re.M), key
    assert "title: Online Pseudo-Zeroth-Order Training of Neuromorphic Spiking Neural Networks" in cff
    assert 'url: "https://arxiv.org/abs/2407.12516"' in cff
    assert PROJECT["urls"]["OPZO paper"] == "https://arxiv.org/abs/2407.12516"


# --------------------------------------------------------------------------- extras and versions


def test_extras_layout():
    extras = PROJECT["optional-dependencies"]
    assert [r.split(">=")[0] for r in PROJECT["dependencies"]] == ["torch"]
    assert extras["all"] == ["opzo_ext[snntorch,spikingjelly,data]"]
    declared = {extra: {re.split(r"[<>=\[ ]", r)[0].lower() for r in reqs} for extra, reqs in extras.items()}
    for module, (dist, extra) in _optional.EXTRAS.items():
        assert dist in declared[extra], f"{module}: the error message sends users to [{extra}], which lacks {dist}"


def test_declared_minimums_are_the_tested_versions():
    """The README's "Tested with" line lists exactly the declared minimum versions, and this
    environment (the one the tests run in) has at least those."""
    text = " ".join((ROOT / "README.md").read_text().split())
    line = re.search(r"Tested with (.*?) on Linux", text)
    assert line, "README.md: the 'Tested with ...' line"
    tested = {name.lower(): ver for name, ver in re.findall(r"([A-Za-z][\w-]*) (\d+(?:\.\d+)+)", line.group(1))}
    bounds = _lower_bounds()
    python_min = PROJECT["requires-python"].removeprefix(">=")
    assert tested.pop("python") == python_min
    assert tested == bounds
    assert sys.version_info[:2] >= _version_tuple(python_min)
    for dist, minimum in bounds.items():
        assert _version_tuple(importlib.metadata.version(dist)) >= _version_tuple(minimum), dist


# --------------------------------------------------------------------------- only torch


BLOCKER = """
import importlib.abc, sys
BLOCKED = set({blocked!r})
class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _NotInstalled())
"""


def _run_without(blocked, body: str) -> dict:
    """Run ``body`` in a fresh interpreter where the ``blocked`` packages cannot be imported; it
    stores what it found in the dict ``out``, returned here."""
    code = (BLOCKER.format(blocked=sorted(blocked)) + "import json\nout = {}\n" + textwrap.dedent(body)
            + "\nprint('RESULT ' + json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.rsplit("RESULT ", 1)[1])


def test_core_imports_with_only_torch():
    out = _run_without(OPTIONAL, """
        import torch
        from torch import nn
        import opzo_ext as opzo

        out["version"] = opzo.__version__
        out["config"] = opzo.TrainConfig(alpha=0.1).alpha
        import opzo_ext.diagnostics, opzo_ext.losses, opzo_ext.deploy, opzo_ext.presets
        out["loaded"] = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
        import opzo_ext.adapters
        out["adapters"] = len(opzo_ext.adapters.ADAPTERS)
        try:
            opzo.train(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)))
        except opzo.UnsupportedModelError as e:
            out["train"] = str(e)
        for name in ("opzo_ext.models", "opzo_ext.data", "opzo_ext.cli", "opzo_ext.report"):
            try:
                __import__(name)
            except ImportError as e:
                out[name] = [type(e).__name__, str(e)]
    """)
    assert out["version"] == opzo_ext.__version__ and out["config"] == 0.1
    assert out["loaded"] == [] and out["adapters"] == 0
    assert "Not installed here: snnTorch and SpikingJelly" in out["train"]
    assert "pip install 'opzo_ext[snntorch]' 'opzo_ext[spikingjelly]'" in out["train"]
    assert out["opzo_ext.models"] == [
        "MissingDependencyError",
        "opzo_ext.models (the paper's networks, built from SpikingJelly modules) needs spikingjelly, which is "
        "not installed: pip install 'opzo_ext[spikingjelly]' (or 'opzo_ext[all]' for every optional library)"]
    assert out["opzo_ext.data"][0] == "MissingDependencyError"
    assert "opzo_ext.data needs numpy" in out["opzo_ext.data"][1] and "'opzo_ext[data]'" in out["opzo_ext.data"][1]
    for command in ("opzo_ext.cli", "opzo_ext.report"):  # the opzo-train / opzo-report commands
        assert out[command][0] == "MissingDependencyError" and "pip install 'opzo_ext[" in out[command][1]


def test_data_without_torchvision_or_tonic():
    """numpy present but torchvision missing: named on import; tonic missing: named by the loader."""
    out = _run_without({"torchvision"}, """
        try:
            import opzo_ext.data
        except ImportError as e:
            out["data"] = str(e)
    """)
    assert out["data"].startswith("opzo_ext.data needs torchvision, which is not installed: "
                                  "pip install 'opzo_ext[data]'")
    out = _run_without({"tonic"}, """
        from opzo_ext.data import load_nmnist
        try:
            load_nmnist("/nonexistent")
        except ImportError as e:
            out["nmnist"] = str(e)
    """)
    assert out["nmnist"].startswith("load_nmnist (N-MNIST) needs tonic, which is not installed: "
                                    "pip install 'opzo_ext[data]'")


@pytest.mark.parametrize("library", ["snntorch", "spikingjelly"])
def test_each_library_alone(library):
    """With one neuron library and none of the data packages, a model of that library trains."""
    other = {"snntorch": "spikingjelly", "spikingjelly": "snntorch"}[library]
    build = {
        "snntorch": "import snntorch as snn\nneuron = snn.Leaky(beta=0.5, init_hidden=True)\n",
        "spikingjelly": "from spikingjelly.activation_based import neuron as sj\nneuron = sj.LIFNode()\n",
    }[library]
    blocked = {other, "tonic", "aedat"} | ({"torchvision", "tqdm"} if library == "snntorch" else set())
    out = _run_without(blocked, build + textwrap.dedent("""
        import torch
        from torch import nn
        import opzo_ext as opzo

        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), neuron, nn.Linear(16, 3))
        with opzo.train(net, method="opzo") as session:
            for t in range(3):
                loss = nn.functional.cross_entropy(net(torch.rand(4, 8) * 4), torch.tensor([0, 1, 2, 0])) / 3
                loss.backward()
        out["layers"] = list(session.layers)
        out["grad"] = all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in net.parameters())
        import opzo_ext.adapters
        out["adapters"] = [a.library for a in opzo_ext.adapters.ADAPTERS]
    """))
    assert out["layers"] == ["1"] and out["grad"]
    assert out["adapters"] == [library]

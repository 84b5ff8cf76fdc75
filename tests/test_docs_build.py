"""The documentation site (mkdocs.yml: guide, results, API reference from the docstrings) builds
with ``mkdocs build --strict``: no broken link or anchor, no page missing from the nav, no
unresolved cross-reference, no docstring warning."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                             str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    for page in ("index.html", "guide/hooks/index.html", "api/opzo_ext/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api/opzo_ext/index.html").read_text()
    assert 'id="opzo_ext.train"' in api and 'id="opzo_ext.TrainConfig"' in api  # rendered from docstrings

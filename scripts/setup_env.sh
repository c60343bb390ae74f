#!/usr/bin/env bash
# Create ./.venv and install npu-retu into it, never pulling a CUDA build of torch on a CPU machine.
#
#   scripts/setup_env.sh [EXTRAS]        e.g. scripts/setup_env.sh test
#
# TORCH_SPEC   the torch requirement to install first (default: the CPU build torch==2.13.0+cpu).
#              On a CUDA node set TORCH_SPEC="torch==2.13.0"; on an Ascend node use the torch
#              version your torch_npu release asks for (see README) and TORCH_INDEX_URL="".
# TORCH_INDEX_URL  where the CPU build is looked up when no local wheel provides it
#              (default: the PyTorch CPU index).
# PYTHON       the interpreter used to create the venv (default: python3).
set -euo pipefail

extras="${1:-}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0+cpu}"
torch_index="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv with $($python --version 2>&1)"
    "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

# 1. torch first, so that the package's `torch>=2.3` is already satisfied and pip resolves nothing
#    bigger. A local wheel (pip's find-links) is tried before the network index.
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "setup: installing $torch_spec"
    if ! "${pip[@]}" install "$torch_spec" 2>/dev/null; then
        if [ -z "$torch_index" ]; then
            echo "setup: could not install $torch_spec and TORCH_INDEX_URL is empty" >&2
            exit 1
        fi
        "${pip[@]}" install "$torch_spec" --index-url "$torch_index" --extra-index-url https://pypi.org/simple
    fi
fi

# 2. the package itself (editable, so configs/ and scripts/ in this checkout are the ones used).
target="."
[ -n "$extras" ] && target=".[$extras]"
stamp="$venv/.npu-retu-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing npu-retu${extras:+ with [$extras]}"
    "${pip[@]}" install -e "$target"
    touch "$stamp"
fi
"$venv/bin/python" -c "import torch, npu_retu; print(f'setup: ready (torch {torch.__version__}, npu-retu {npu_retu.__version__})')"

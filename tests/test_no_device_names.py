"""Device-specific names live only in npu_retu/device/ and the per-backend kernel files.

Everything else asks the device layer (``from npu_retu.device import get_backend``). This test reads
every ``.py`` under ``npu_retu/``, ``kernels/`` and ``scripts/`` and fails, listing file:line, on a
device-specific name in *code*: identifiers (``torch.cuda``, ``.cuda(``, ``import torch_npu``) and
string literals (``"cuda:0"``, ``"nccl"``, ``"CUDA_VISIBLE_DEVICES"``, Ray's ``"GPU"``).

Comments and docstrings are prose and are not scanned ("runs on CUDA and NPU" is fine there).
The project's own name (``npu_retu``, ``npu-retu``) is not a device name.
"""

from __future__ import annotations

import ast
import fnmatch
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# where device names belong
EXEMPT = ["npu_retu/device/*", "kernels/triton/*.py", "kernels/ascend/*.py", "kernels/npu*.py"]

# (file, exact string literal) -> why it may name a device. Keep this list short: new code should
# take the names from npu_retu.device (e.g. DEVICE_CHOICES) instead of adding an entry.
ALLOWED_LITERALS = {
    ("npu_retu/config.py", "cuda"): "run.device: Literal['auto', 'cpu', 'cuda', 'npu'] (the user-facing choice)",
    ("npu_retu/config.py", "npu"): "run.device: Literal['auto', 'cpu', 'cuda', 'npu'] (the user-facing choice)",
    ("npu_retu/cli.py", "SFT-then-RL post-training with a validation-loss phase monitor, for Ascend NPUs, CUDA GPUs and CPU."):
        "the program description shown by --help",
}

# Longest alternatives first. A name counts when no letter precedes it, so `input` (i-npu-t) is
# not `npu`, while `torch_npu`, `is_npu_available`, `cudagraph` and `CUDA_VISIBLE_DEVICES` are.
BANNED = re.compile(
    r"(?<![a-z])(ascend_rt_visible_devices|cuda_visible_devices|transfer_to_npu|torch_npu"
    r"|cudnn|cuda|npu|nccl|hccl|num_gpus)",
    re.IGNORECASE,
)
PROJECT_NAME = re.compile(r"npu[_-]retu", re.IGNORECASE)
RAY_RESOURCE_LITERALS = {"GPU", "NPU"}  # Ray resource names, banned as whole string literals


def scan_source(source: str, path: str = "<snippet>") -> list[tuple[int, str]]:
    """(line, offending text) for every device name in the code of ``source``."""
    docstrings = _docstring_positions(source)
    found: list[tuple[int, str]] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME:
            is_string = False
        elif token.type == tokenize.STRING or token.type in _FSTRING_PARTS:
            if token.start in docstrings:
                continue
            is_string = True
        else:
            continue  # comments, operators, numbers
        if is_string and (path, _literal_value(token.string)) in ALLOWED_LITERALS:
            continue
        if is_string and _literal_value(token.string) in RAY_RESOURCE_LITERALS:
            found.append((token.start[0], _literal_value(token.string)))
            continue
        text = PROJECT_NAME.sub(lambda m: " " * len(m.group()), token.string)
        for match in BANNED.finditer(text):
            found.append((token.start[0] + text.count("\n", 0, match.start()), match.group()))
    return found


_FSTRING_PARTS = {getattr(tokenize, name) for name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END") if hasattr(tokenize, name)}


def _docstring_positions(source: str) -> set[tuple[int, int]]:
    positions = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                positions.add((first.value.lineno, first.value.col_offset))
    return positions


def _literal_value(token_text: str) -> object:
    try:
        return ast.literal_eval(token_text)
    except (ValueError, SyntaxError):  # f-strings and their parts
        return token_text


def scanned_files() -> list[Path]:
    files = sorted((ROOT / "npu_retu").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    files += sorted((ROOT / "scripts").glob("*.py"))
    return [f for f in files if not any(fnmatch.fnmatch(_relative(f), pattern) for pattern in EXEMPT)]


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# ------------------------------------------------------------------------------------------------


def test_no_device_names_outside_the_device_layer():
    violations = []
    for path in scanned_files():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for line, name in scan_source(source, _relative(path)):
            violations.append(f"{_relative(path)}:{line}: {name!r} in `{lines[line - 1].strip()}`")
    assert not violations, (
        "device-specific names outside npu_retu/device/ (ask `from npu_retu.device import get_backend` "
        "instead):\n" + "\n".join(violations)
    )


def test_the_scan_covers_the_package():
    scanned = {_relative(f) for f in scanned_files()}
    assert "npu_retu/cli.py" in scanned and "npu_retu/config.py" in scanned
    assert not any(name.startswith("npu_retu/device/") for name in scanned)


def test_every_allow_list_entry_is_still_needed():
    for (relative, literal), reason in ALLOWED_LITERALS.items():
        path = ROOT / relative
        assert path.is_file(), f"allow-list entry for a missing file {relative} ({reason})"
        source = path.read_text(encoding="utf-8")
        literals = {
            _literal_value(t.string)
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type == tokenize.STRING
        }
        assert literal in literals, f"stale allow-list entry: {relative} no longer has the literal {literal!r}"


OFFENDING = '''\
import torch_npu
from torch_npu.contrib import transfer_to_npu
x = torch.zeros(2).cuda()
device = "npu:0"
os.environ["CUDA_VISIBLE_DEVICES"] = "0"
os.environ["ASCEND_RT_VISIBLE_DEVICES"] = "0"
dist.init_process_group(backend="nccl")
dist.init_process_group(backend="hccl")
worker = ray.remote(resources={"GPU": 1})(Worker)
label = f"cuda:{rank}"
torch.backends.cudnn.benchmark = True
if is_npu_available():
    torch.npu.synchronize()
free = torch.cuda.memory_allocated()
message = """install torch_npu
to run on NPU"""
'''

CLEAN = '''\
"""Runs the same on CUDA, NPU and CPU (a docstring is prose)."""
from npu_retu.device import get_backend  # comments may say cuda, npu, nccl


class Inputs:
    """Per-NPU micro-batches: prose again."""

    def input_ids(self, inputs):
        backend = get_backend()
        return inputs["input_ids"].to(backend.device())


PROGRAM = "npu-retu"
LOGGER = "NPU_RETU_LOG"
'''


def test_scanner_flags_every_device_name_in_a_synthetic_snippet():
    assert scan_source(OFFENDING) == [
        (1, "torch_npu"),
        (2, "torch_npu"), (2, "transfer_to_npu"),
        (3, "cuda"),
        (4, "npu"),
        (5, "CUDA_VISIBLE_DEVICES"),
        (6, "ASCEND_RT_VISIBLE_DEVICES"),
        (7, "nccl"),
        (8, "hccl"),
        (9, "GPU"),
        (10, "cuda"),
        (11, "cudnn"),
        (12, "npu"),
        (13, "npu"),
        (14, "cuda"),
        (15, "torch_npu"), (16, "NPU"),
    ]


def test_scanner_passes_a_clean_snippet():
    assert scan_source(CLEAN) == []


def test_allow_list_is_per_file():
    snippet = 'device: Literal["auto", "cpu", "cuda", "npu"] = "auto"\n'
    assert scan_source(snippet, "npu_retu/config.py") == []
    assert scan_source(snippet, "npu_retu/trainer/sft.py") == [(1, "cuda"), (1, "npu")]

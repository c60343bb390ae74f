"""Nothing in a model folder runs, and a broken one is a one-line error naming the file.

The model is a 1-layer Qwen2 built here with the fixture tokenizer (tests/fixtures/data/chatml_tokenizer):
custom code is a ``modeling_evil.py`` / ``configuration_evil.py`` named by ``auto_map`` whose import
writes a marker file; a malicious ``pytorch_model.bin`` unpickles to ``os.system("touch marker")``.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from npu_retu.cli import main
from npu_retu.errors import UserError
from npu_retu.models.modeling import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "data"
DATA = FIXTURES / "rl_plain.jsonl"
CUSTOM_CODE_MESSAGE = "ships its own Python code ({files} in {where}'s auto_map), which npu-retu does not run unless model.trust_remote_code=true"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 1-layer Qwen2 with tied embeddings in Hugging Face layout (safetensors, config, tokenizer)."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(FIXTURES / "chatml_tokenizer")
    config = Qwen2Config(
        vocab_size=64 * math.ceil(len(tokenizer) / 64), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny") / "model"
    Qwen2ForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def model_dir(tiny_model, tmp_path) -> Path:
    """A fresh copy of the tiny model that a test may break."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def _ship_custom_model_code(folder: Path, marker: Path) -> None:
    """config.json of a model type transformers does not know, whose classes come from the folder."""
    plant = f"from pathlib import Path\nPath({str(marker)!r}).write_text('custom code ran')\n"
    (folder / "configuration_evil.py").write_text(plant + textwrap.dedent("""
        from transformers import Qwen2Config
        class EvilConfig(Qwen2Config):
            model_type = "evil"
    """))
    (folder / "modeling_evil.py").write_text(plant + textwrap.dedent("""
        from transformers import Qwen2ForCausalLM
        from .configuration_evil import EvilConfig
        class EvilForCausalLM(Qwen2ForCausalLM):
            config_class = EvilConfig
    """))
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil"
    config["architectures"] = ["EvilForCausalLM"]
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))


def _ship_custom_tokenizer_code(folder: Path, marker: Path) -> None:
    """tokenizer_config.json naming a tokenizer class from the folder (config.json stays a plain Qwen2)."""
    (folder / "tokenization_evil.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(marker)!r}).write_text('custom code ran')
        from transformers import PreTrainedTokenizerFast
        class EvilTokenizerFast(PreTrainedTokenizerFast):
            pass
    """))
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    settings["tokenizer_class"] = "EvilTokenizerFast"
    settings["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizerFast"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(settings))


def _run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``printf 'y\\ny\\n' | python -c code``: a "y" waits on stdin for any prompt to answer."""
    env = dict(os.environ, HF_MODULES_CACHE=str(tmp_path / "hf-modules"), TRANSFORMERS_VERBOSITY="error")
    return subprocess.run(
        [sys.executable, "-c", code], input="y\ny\n", capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )


# --------------------------------------------------------------------------------------------
# custom code (auto_map)


@pytest.mark.parametrize("loader", ["load_model", "load_tokenizer"])
def test_custom_model_code_is_refused_without_asking_even_when_stdin_says_yes(model_dir, tmp_path, loader):
    marker = tmp_path / "custom-code-ran"
    _ship_custom_model_code(model_dir, marker)
    code = textwrap.dedent(f"""
        from npu_retu.errors import UserError
        from npu_retu.models.modeling import {loader}
        try:
            {loader}({str(model_dir)!r})
        except UserError as e:
            print("UserError:", e)
    """)
    out = _run_python(code, tmp_path)
    assert not marker.exists(), "the folder's Python code ran"
    assert out.returncode == 0, out.stderr
    expected = f"UserError: {model_dir} " + CUSTOM_CODE_MESSAGE.format(files="configuration_evil.py, modeling_evil.py", where="config.json")
    assert out.stdout.splitlines()[0].startswith(expected), out.stdout
    assert len(out.stdout.splitlines()) == 1
    assert "[y/N]" not in out.stdout + out.stderr  # transformers' prompt never appeared


def test_custom_tokenizer_code_is_refused_without_asking(model_dir, tmp_path, monkeypatch):
    marker = tmp_path / "custom-code-ran"
    _ship_custom_tokenizer_code(model_dir, marker)
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail(f"asked on stdin: {args}"))
    with pytest.raises(UserError) as caught:
        load_tokenizer(str(model_dir))
    assert str(caught.value).startswith(
        f"{model_dir} " + CUSTOM_CODE_MESSAGE.format(files="tokenization_evil.py", where="tokenizer_config.json")
    )
    assert not marker.exists()


def test_known_model_type_with_auto_map_is_refused_too(model_dir, tmp_path, monkeypatch):
    # a "qwen2" config with auto_map: transformers would quietly load its own Qwen2 instead of the
    # class the folder asks for; npu-retu says so instead
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "other/repo--modeling_x.XForCausalLM"}
    (model_dir / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail(f"asked on stdin: {args}"))
    with pytest.raises(UserError) as caught:
        load_model(str(model_dir))
    assert str(caught.value).startswith(f"{model_dir} " + CUSTOM_CODE_MESSAGE.format(files="modeling_x.py", where="config.json"))


def test_trust_remote_code_true_runs_the_folders_code(model_dir, tmp_path):
    marker = tmp_path / "custom-code-ran"
    _ship_custom_model_code(model_dir, marker)
    out = _run_python(
        f"from npu_retu.models.modeling import load_model; print(type(load_model({str(model_dir)!r}, trust_remote_code=True)).__name__)",
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["EvilForCausalLM"]
    assert marker.read_text() == "custom code ran"


def test_eval_refuses_custom_code_in_one_line(model_dir, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "custom-code-ran"
    _ship_custom_model_code(model_dir, marker)
    monkeypatch.setattr("builtins.input", lambda *args: pytest.fail(f"asked on stdin: {args}"))
    assert main(["eval", "--model", str(model_dir), "--data", str(DATA)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"npu-retu eval: error: {model_dir} " + CUSTOM_CODE_MESSAGE.format(
        files="configuration_evil.py, modeling_evil.py", where="config.json"))
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize("flag, expected", [([], False), (["--trust-remote-code"], True)])
def test_eval_passes_trust_remote_code_to_both_loaders(model_dir, monkeypatch, capsys, flag, expected):
    import npu_retu.models.modeling as modeling

    seen = {}  # the defaults say whether eval passed the flag on at all

    def fake_tokenizer(path, *, trust_remote_code="not passed"):
        seen["tokenizer"] = trust_remote_code
        return object()

    def fake_model(path, *args, trust_remote_code="not passed", **kwargs):
        seen["model"] = trust_remote_code
        raise UserError("stop here")

    monkeypatch.setattr(modeling, "load_tokenizer", fake_tokenizer)
    monkeypatch.setattr(modeling, "load_model", fake_model)
    assert main(["eval", "--model", str(model_dir), "--data", str(DATA), *flag]) == 2
    assert capsys.readouterr().err == "npu-retu eval: error: stop here\n"
    assert seen == {"tokenizer": expected, "model": expected}


# --------------------------------------------------------------------------------------------
# broken safetensors


def _garble_header(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[8:40] = b"\xff" * 32  # the start of the JSON header: not UTF-8
    file.write_bytes(bytes(data))


def _header_length_too_large(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[:8] = struct.pack("<Q", 10**12)
    file.write_bytes(bytes(data))


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


@pytest.mark.parametrize(
    "breakage, detail",
    [
        (_garble_header, "invalid UTF-8 in header"),
        (_header_length_too_large, "header too large"),
        (_truncate, "incomplete metadata, file not fully covered"),
    ],
)
def test_corrupted_safetensors_is_one_line_naming_the_file(model_dir, breakage, detail):
    weights = model_dir / "model.safetensors"
    breakage(weights)
    with pytest.raises(UserError) as caught:
        load_model(str(model_dir))
    message = str(caught.value)
    assert message.startswith(f"{weights}: corrupted or truncated safetensors file (Error while deserializing header: ")
    assert detail in message and "\n" not in message


def test_empty_safetensors_through_the_cli(model_dir, capsys):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(b"")
    assert main(["eval", "--model", str(model_dir), "--data", str(DATA)]) == 2
    err = capsys.readouterr().err
    assert err == f"npu-retu eval: error: {weights}: empty file (0 bytes), not safetensors weights\n"


def test_weights_of_another_shape_are_refused(model_dir):
    import torch
    from safetensors.torch import load_file, save_file

    weights = load_file(model_dir / "model.safetensors")
    weights["model.norm.weight"] = torch.ones(3)
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError) as caught:
        load_model(str(model_dir))
    assert str(caught.value) == (
        f"{model_dir}: weight model.norm.weight has shape [3] in the checkpoint but [16] in config.json "
        "(1 mismatched in all): the weights belong to another model"
    )


def test_weights_missing_from_the_checkpoint_are_refused_not_randomly_initialised(model_dir):
    from safetensors.torch import load_file, save_file

    weights = load_file(model_dir / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(UserError) as caught:
        load_model(str(model_dir))
    assert str(caught.value) == (
        f"{model_dir}: the checkpoint lacks 1 of the model's weights (model.norm.weight): "
        "it is incomplete or for another architecture"
    )


# --------------------------------------------------------------------------------------------
# pickles (pytorch_model.bin)


class _RunsAShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_malicious_pytorch_model_bin_is_never_unpickled(model_dir, tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    marker = tmp_path / "pickle-ran"
    weights = load_file(model_dir / "model.safetensors")
    (model_dir / "model.safetensors").unlink()
    torch.save({"trap": _RunsAShellCommand(f"touch {marker}"), **weights}, model_dir / "pytorch_model.bin")
    assert main(["eval", "--model", str(model_dir), "--data", str(DATA)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"npu-retu eval: error: {model_dir} has only PyTorch pickle weights (pytorch_model.bin), which npu-retu "
        "does not load because unpickling can run code; convert them to model.safetensors where you trust the "
        "file (from_pretrained, then save_pretrained)\n"
    )
    assert not marker.exists()


def test_a_plain_pickle_bin_is_refused_before_it_is_opened(model_dir, tmp_path):
    # a legacy (non-zip) pickle, which torch.load would hand to its unpickler directly
    marker = tmp_path / "pickle-ran"
    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(_RunsAShellCommand(f"touch {marker}")))
    with pytest.raises(UserError) as caught:
        load_model(str(model_dir))
    assert str(caught.value).startswith(f"{model_dir} has only PyTorch pickle weights (pytorch_model.bin), ")
    assert not marker.exists()

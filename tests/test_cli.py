import subprocess
import sys

import pytest

from npu_retu.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name} " in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: npu-retu " + name)


def test_unknown_command_is_an_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_console_script_runs():
    # the installed entry point, as a user calls it
    out = subprocess.run([sys.executable, "-m", "npu_retu", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("npu-retu ")


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["sft", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    # a path that does not exist is "not found", not "no shipped config named ..." (issue 14)
    assert err == f"npu-retu sft: error: config file not found: {tmp_path / 'nope.yaml'}\n"


def test_overrides_after_an_option_reach_the_config(capsys):
    # scripts/launch.sh appends cluster.* overrides at the end of the user's command line, after any
    # --resume / --overwrite: they must still be read as overrides (here: one that names a bad key)
    from npu_retu.cli import main

    assert main(["sft", "--config", "demo_cpu", "sft.max_steps=1", "--overwrite", "cluster.no_such_key=1"]) == 2
    assert "unknown config key 'cluster.no_such_key'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a stray non-override is still an argparse error
        main(["sft", "--config", "demo_cpu", "--overwrite", "--no-such-option"])

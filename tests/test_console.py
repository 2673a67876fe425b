"""The recbole-mm command (recbole_mm.cli.console_main): training, the subcommands, install hints."""

from __future__ import annotations

import os
import sys

import pytest
import yaml

from conftest import REPO
from recbole_mm.cli import SUBCOMMANDS, console_main
from recbole_mm.resources import checkout_root, install_command

# An option that only the subcommand's own parser knows: its --help reached the right module.
OWN_OPTION = {"recommend": "--users", "benchmark": "--report-only", "analysis": "longtail",
              "download": "--data-path", "features": "--output-dir"}


def test_each_subcommand_reaches_its_module(capsys):
    assert sorted(SUBCOMMANDS) == sorted(OWN_OPTION)
    for name, option in OWN_OPTION.items():
        with pytest.raises(SystemExit) as stop:
            console_main([name, "--help"])
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert option in out and all(other not in out for other in ("--nproc", "--resume")), name


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as stop:
        console_main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: recbole-mm") and "--model" in out
    assert all(f"  {name}  " in out for name in SUBCOMMANDS)


def test_trains_then_recommends(planted, monkeypatch, capsys):
    root, config = planted
    config_file = root / "planted.yaml"
    config_file.write_text(yaml.safe_dump({k: v for k, v in config.items() if k not in ("epochs",)}))
    argv = ["--model=VBPR", "--dataset=planted", f"--config_files={config_file}", "--epochs=1"]
    monkeypatch.setattr(sys, "argv", ["recbole-mm", *argv])  # RecBole reads --key=value from sys.argv
    console_main()
    out = capsys.readouterr().out
    assert "VBPR on planted" in out
    checkpoint = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("checkpoint: "))
    console_main(["recommend", checkpoint, "--users", "3", "--k", "4", "--format", "csv"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user,rank,item,score" and [line.split(",")[:2] for line in lines[1:]] == [
        ["3", str(rank)] for rank in range(1, 5)]


def test_bad_input_is_one_line_for_training_and_subcommands(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = [(["--model=NoSuchModel", "--dataset=tiktok"], "unknown model 'NoSuchModel'"),
             (["recommend", "nothere.pth", "--users", "0"], "nothere.pth"),
             (["analysis", "longtail", "nothere.pth"], "nothere.pth")]
    for argv, words in cases:
        monkeypatch.setattr(sys, "argv", ["recbole-mm", *argv])
        with pytest.raises(SystemExit) as stop:
            console_main(argv)
        assert stop.value.code == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("recbole_mm: error:") and words in lines[0], lines
    assert not any(tmp_path.iterdir())


def test_install_hints_say_what_works_in_a_checkout(tmp_path, monkeypatch, capsys):
    """In a checkout recbole_mm is on no index, so the hint installs the checkout's extra; an installed
    copy gets pip install 'recbole_mm[extra]' (tests/test_wheel.py checks that side)."""
    assert checkout_root() == REPO
    assert install_command("download") == f"pip install -e '{REPO}[download]'"
    monkeypatch.setitem(sys.modules, "gdown", None)  # import gdown -> ImportError
    with pytest.raises(SystemExit) as stop:
        console_main(["download", "amazon-baby", "--data-path", str(tmp_path)])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and install_command("download") in lines[0] and "--from DIR" in lines[0]
    assert not any(tmp_path.iterdir())


def test_the_command_enables_huge_pages_unless_the_environment_sets_them(monkeypatch):
    from recbole_mm import cli

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.setattr(cli, "main", lambda args, prog: None)  # dispatch only, no training
    cli.console_main(["--model=BPR", "--dataset=tiktok"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    cli.console_main(["--model=BPR", "--dataset=tiktok"])
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"  # the user's choice stands

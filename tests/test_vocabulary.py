"""One option vocabulary across the verbs; the old spellings still work, hidden (issue 29.4)."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from xplain.cli.aliases import canonical
from xplain.cli.app import app


def test_old_spellings_are_rewritten_for_their_verb_only():
    assert canonical(["eval", "m.onnx", "d", "--methods", "a,b", "--metrics=x"]) == [
        "eval",
        "m.onnx",
        "d",
        "--method",
        "a,b",
        "--metric=x",
    ]
    assert canonical(["--no-plugin", "eval", "explain", "m", "--labels", "f"]) == [
        "--no-plugin",
        "eval",
        "explain",
        "m",
        "--class-names",
        "f",
    ]  # the value of a global option is not the verb
    assert canonical(["eval", "m", "d", "--labels", "l.csv"]) == [
        "eval",
        "m",
        "d",
        "--labels",
        "l.csv",
    ]
    assert canonical(["explain", "m", "--", "--labels"]) == ["explain", "m", "--", "--labels"]


def test_help_shows_the_new_spellings_only():
    runner = CliRunner()
    for verb in ("explain", "eval", "bench"):
        text = re.sub(r"\x1b\[[0-9;]*m", "", runner.invoke(app, [verb, "--help"]).output)
        assert "--method" in text and "--methods" not in text and "--metrics " not in text
    explain = runner.invoke(app, ["explain", "--help"]).output
    assert "--class-names" in re.sub(r"\x1b\[[0-9;]*m", "", explain)


def test_library_warnings_stay_quiet_without_debug(capsys):
    import warnings

    from xplain.cli import app as app_module
    from xplain.cli.quiet import from_library

    torch_file = "/x/lib/python3.11/site-packages/torch/onnx/utils.py"
    assert from_library(torch_file)
    assert not from_library("/x/lib/python3.11/site-packages/my_plugin/m.py")
    assert not from_library("/work/xplain/xplain/run/api.py")
    app_module._warned.clear()
    app_module._show_warning(UserWarning("internal"), UserWarning, torch_file, 1)
    app_module._show_warning(UserWarning("yours"), UserWarning, "/work/plugins/p.py", 1)
    err = capsys.readouterr().err
    assert "internal" not in err and "xplain: warning: yours" in err
    warnings.resetwarnings()

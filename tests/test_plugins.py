"""The plugin host: discovery through entry points, broken plugins, blocking, parameters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import xplain
from xplain.cli.app import main
from xplain.plugins.registry import Registry, clear_cache, get_registry, validate_params

from .conftest import REPO


def test_builtins_register_through_entry_points():
    registry = Registry().discover()
    assert {"saliency", "random"} <= set(registry.methods)
    assert registry.methods["saliency"].plugin == "saliency"
    assert registry.plugins["saliency"].distribution == "xplain"


def test_builtins_import_only_the_public_api():
    for path in (REPO / "plugins" / "xplain_builtins").rglob("*.py"):
        source = path.read_text()
        for line in source.splitlines():
            stripped = line.strip()
            if stripped.startswith(("import xplain.", "from xplain.", "from xplain import")):
                pytest.fail(f"{path.name} reaches into xplain internals: {stripped}")


@pytest.fixture()
def fake_dist(tmp_path, monkeypatch):
    """Put a distribution with entry points on sys.path; returns a function adding plugins."""
    dist = tmp_path / "fake_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugins\nVersion: 1.0\n")
    entries = []

    def add(name: str, module_source: str):
        (tmp_path / f"{name}_mod.py").write_text(textwrap.dedent(module_source))
        entries.append(f"{name} = {name}_mod")
        (dist / "entry_points.txt").write_text("[xplain]\n" + "\n".join(entries) + "\n")

    monkeypatch.syspath_prepend(str(tmp_path))
    clear_cache()
    yield add
    clear_cache()
    for name in list(sys.modules):
        if name.endswith("_mod") and name.startswith(("broken", "good", "dup", "bad")):
            del sys.modules[name]


def test_broken_plugin_is_reported_and_skipped(fake_dist, capsys):
    fake_dist("broken", "raise ImportError('missing dependency frobnicate')\n")
    fake_dist(
        "good",
        """
        import xplain
        @xplain.hookimpl
        def register_methods(register):
            register(xplain.Method(name="good-method", summary="ok", explain=lambda *a: None))
    """,
    )
    registry = get_registry()
    assert "good-method" in registry.methods
    assert "frobnicate" in registry.plugins["broken"].error
    assert main(["methods"]) == 0
    captured = capsys.readouterr()
    assert "good-method" in captured.out
    assert "plugin 'broken' skipped" in captured.err and "frobnicate" in captured.err


def test_broken_plugin_is_fatal_with_strict(fake_dist, capsys):
    fake_dist("broken", "raise ImportError('missing dependency frobnicate')\n")
    assert main(["--strict-plugins", "methods"]) == xplain.ExitCode.PLUGIN
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken" in err[0] and "frobnicate" in err[0]


def test_no_plugin_blocks_loading(fake_dist, capsys):
    fake_dist("broken", "raise ImportError('missing dependency frobnicate')\n")
    assert main(["--strict-plugins", "--no-plugin", "broken", "methods"]) == 0
    assert main(["--no-plugin", "saliency", "methods"]) == 0
    assert "saliency" not in capsys.readouterr().out.split("random")[-1]
    assert "saliency" not in get_registry(blocked=("saliency",)).methods


def test_duplicate_and_invalid_registrations_are_plugin_errors(fake_dist):
    fake_dist(
        "dup",
        """
        import xplain
        @xplain.hookimpl
        def register_methods(register):
            register(xplain.Method(name="saliency", summary="again", explain=lambda *a: None))
    """,
    )
    fake_dist(
        "bad",
        """
        import xplain
        @xplain.hookimpl
        def register_methods(register):
            register(xplain.Method(name="Bad Name", summary="x", explain=lambda *a: None))
    """,
    )
    registry = get_registry()
    assert "already registered" in registry.plugins["dup"].error
    assert "lower-case" in registry.plugins["bad"].error
    assert registry.methods["saliency"].plugin == "saliency"


def test_misspelled_hook_is_a_plugin_error(fake_dist, capsys):
    fake_dist(
        "badhook",
        """
        import xplain
        @xplain.hookimpl
        def register_method(register):  # misspelled: the hook is register_methods
            register(xplain.Method(name="badhook-method", summary="x", explain=lambda *a: None))
        @xplain.hookimpl
        def register_metrics(register):
            register(xplain.Metric(name="badhook-metric", summary="x", score=lambda *a: {}))
    """,
    )
    registry = get_registry()
    assert "register_method" in registry.plugins["badhook"].error
    # skipped like any broken plugin: its valid hook does not run either, the others are unharmed
    assert "badhook-metric" not in registry.metrics and "saliency" in registry.methods
    assert registry.pm.get_plugin("badhook") is None
    assert main(["methods"]) == 0
    assert "plugin 'badhook' skipped" in capsys.readouterr().err
    clear_cache()
    assert main(["--strict-plugins", "methods"]) == xplain.ExitCode.PLUGIN
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "badhook" in err[0] and "register_method" in err[0]


def test_undecorated_hook_function_is_not_called(fake_dist):
    fake_dist(
        "goodplain",
        """
        import xplain
        def register_methods(register):  # no @xplain.hookimpl: pluggy must not call it
            raise RuntimeError("undecorated function was called")
    """,
    )
    registry = get_registry(strict=True)  # a call would raise, and strict makes that fatal
    assert registry.plugins["goodplain"].error is None
    assert registry.plugins["goodplain"].methods == []


def test_onnx_loader_is_a_trylast_hookimpl():
    from xplain.plugins.registry import CORE_LOADER

    registry = Registry().discover()
    impls = registry.pm.hook.load_model.get_hookimpls()
    (impl,) = [i for i in impls if i.plugin_name == CORE_LOADER]
    assert impl.trylast
    calls = []

    class Passing:
        @xplain.hookimpl
        def load_model(self, path, options):
            calls.append(path)  # a plugin that does not claim the file: None passes it on

    # registered after the plugin, the ONNX loader would run first without trylast
    core = registry.pm.unregister(name=CORE_LOADER)
    registry.register_plugin(Passing(), "passing")
    registry.pm.register(core, name=CORE_LOADER)
    path = REPO / "sample_models" / "digits_mlp.onnx"
    model = xplain.load_model(path, registry=registry)
    assert calls == [str(path)] and isinstance(model, xplain.Model)


def test_params_are_validated_against_the_schema():
    declared = [
        xplain.Param("steps", "int", 50, "steps", min=1),
        xplain.Param("mode", "str", "a", "m", choices=("a", "b")),
        xplain.Param("smooth", "bool", True, "s"),
        xplain.Param("sigma", "float", 0.15, "noise"),
    ]
    assert validate_params(declared, {"steps": "7", "smooth": "off", "sigma": "1e-2"}, "m") == {
        "steps": 7,
        "mode": "a",
        "smooth": False,
        "sigma": 0.01,
    }
    with pytest.raises(xplain.UsageError, match="valid: mode, sigma, smooth, steps"):
        validate_params(declared, {"stepz": "3"}, "method 'm'")
    for bad, match in (
        ({"steps": "x"}, "expects int"),
        ({"steps": "0"}, ">= 1"),
        ({"mode": "c"}, "one of a, b"),
        ({"smooth": "maybe"}, "true/false"),
    ):
        with pytest.raises(xplain.UsageError, match=match):
            validate_params(declared, bad, "m")


def test_methods_show_prints_description_and_params(capsys):
    assert main(["methods", "show", "random"]) == 0
    text = capsys.readouterr().out
    assert "stochastic" in text and "U[0, 1)" in text
    assert main(["methods", "show", "--json", "saliency"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "saliency" and data["capabilities"]["needs_gradients"] is True


def test_help_and_methods_do_not_import_torch():
    code = textwrap.dedent("""
        import sys, contextlib, io
        from xplain.cli.app import main
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["--help"]) == 0
            assert main(["methods"]) == 0
            assert main(["methods", "show", "saliency"]) == 0
            assert main(["plugins"]) == 0
        heavy = sorted(m for m in ("torch", "onnx", "onnx2torch", "torchvision", "matplotlib") if m in sys.modules)
        assert not heavy, heavy
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def example_plugin_installed():
    """pip-install the out-of-tree example distribution into this environment, then remove it."""
    source = REPO / "plugins" / "example-plugin"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-build-isolation", "--no-index", str(source)],
        check=True,
    )
    clear_cache()
    yield
    subprocess.run([*pip, "uninstall", "-y", "xplain-example-plugin"], check=True)
    clear_cache()


def test_third_party_plugin_installed_with_pip_appears(example_plugin_installed, tiny_model):
    out = subprocess.run(
        [sys.executable, "-m", "xplain", "methods"], capture_output=True, text=True, check=True
    ).stdout
    assert "example-center-prior" in out
    out = subprocess.run(
        [sys.executable, "-m", "xplain", "metrics"], capture_output=True, text=True, check=True
    ).stdout
    assert "example-map-mean" in out
    registry = get_registry()
    assert registry.methods["example-center-prior"].plugin == "example"
    import torch

    x = tiny_model.example_input(2)
    maps = xplain.explain(
        tiny_model, x, method="example-center-prior", params={"sigma": "0.25"}
    ).maps
    assert maps.shape == (2, 16, 16)
    assert torch.argmax(maps[0]).item() in {
        7 * 16 + 7,
        7 * 16 + 8,
        8 * 16 + 7,
        8 * 16 + 8,
    }  # peak at the centre
    # the plugin's own test suite (xplain.testing's contract checks) passes against the install
    own = REPO / "plugins" / "example-plugin" / "tests"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(own)],
        capture_output=True,
        text=True,
        cwd=own.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]

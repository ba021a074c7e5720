"""Verification is remembered per model digest; a changed file or other versions verify again;
the cache files are untrusted input (issue 29.3)."""

from __future__ import annotations

import json

import pytest

import xplain.onnx.loader as loader
from xplain.cli.app import main
from xplain.onnx import verified


def _count_verifications(monkeypatch):
    calls = []
    real = loader._verify
    monkeypatch.setattr(loader, "_verify", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _inspect(path, *flags):
    return main(["inspect", str(path), "--json", *flags])


def test_second_load_skips_verification_and_a_changed_file_is_checked(
    tiny_cnn_path, tmp_path, monkeypatch, capsys
):
    calls = _count_verifications(monkeypatch)
    assert _inspect(tiny_cnn_path) == 0
    assert _inspect(tiny_cnn_path) == 0
    assert len(calls) == 1
    out = capsys.readouterr().out
    assert "verification remembered" in out
    assert _inspect(tiny_cnn_path, "--verify") == 0  # --verify: always
    assert len(calls) == 2
    import onnx

    proto = onnx.load(str(tiny_cnn_path))
    proto.producer_version = "changed"  # same graph, another file: another digest
    changed = tmp_path / "changed.onnx"
    onnx.save(proto, str(changed))
    assert _inspect(changed) == 0 and len(calls) == 3
    calls.clear()
    monkeypatch.setenv("XPLAIN_VERIFY", "never")
    assert _inspect(tiny_cnn_path) == 0 and len(calls) == 0
    monkeypatch.setenv("XPLAIN_VERIFY", "always")
    assert _inspect(tiny_cnn_path) == 0 and len(calls) == 1
    assert _inspect(tiny_cnn_path, "--no-verify") == 0 and len(calls) == 1


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"digest": "x"}',
        b"{" * 5000,
        None,  # a well-formed entry with a negative difference
        "versions",  # a well-formed entry written by other versions
    ],
)
def test_bad_cache_files_are_ignored(tiny_cnn_path, monkeypatch, capsys, content):
    calls = _count_verifications(monkeypatch)
    assert _inspect(tiny_cnn_path) == 0
    digest = json.loads(capsys.readouterr().out)["digest"]
    entry = verified.cache_dir() / "verified" / f"{digest}.json"
    record = json.loads(entry.read_text())
    if content is None:
        record["max_abs_diff"] = -1.0
        content = json.dumps(record).encode()
    elif content == "versions":
        record["versions"]["torch"] = "0.0"
        content = json.dumps(record).encode()
    entry.write_bytes(content)
    assert verified.recall(digest) is None
    assert _inspect(tiny_cnn_path) == 0
    assert len(calls) == 2  # verified again, and the entry rewritten
    assert verified.recall(digest) is not None


def test_bad_xplain_verify_is_one_line(tiny_cnn_path, monkeypatch, capsys):
    monkeypatch.setenv("XPLAIN_VERIFY", "sometimes")
    assert _inspect(tiny_cnn_path) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "XPLAIN_VERIFY" in err[0]

"""Atomic writes: the target is either the old file or the complete new one, never a mix."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import xplain
from xplain import fileio
from xplain.fileio import append_line, atomic_open, atomic_write, save_npy, write_json


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "out.bin"
    atomic_write(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert _names(target.parent) == ["out.bin"]  # no temp file left behind


def test_temp_file_is_hidden_in_same_folder_until_commit(tmp_path):
    target = tmp_path / "out.json"
    target.write_bytes(b"old")
    with atomic_open(target) as f:
        f.write(b"new")
        others = [n for n in _names(tmp_path) if n != "out.json"]
        assert len(others) == 1
        assert re.fullmatch(r"\.out\.json\.[0-9a-f]+\.tmp", others[0])
        assert target.read_bytes() == b"old"  # not visible before the block completes
    assert target.read_bytes() == b"new"
    assert _names(tmp_path) == ["out.json"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_leaves_target_untouched_and_removes_temp(tmp_path, exc):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_open(target) as f:
            f.write(b"half-written")
            raise exc
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["out.bin"]


def test_exception_without_existing_target_creates_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "new.bin") as f:
            f.write(b"x")
            raise ValueError
    assert _names(tmp_path) == []


def test_failed_replace_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
    # a write failure is one line naming the file (exit 2), not an OSError traceback
    with pytest.raises(xplain.UsageError, match="cannot write the file") as info:
        atomic_write(target, b"new")
    assert str(target) in str(info.value)
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["out.bin"]


def test_data_is_fsynced_before_replace(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        # Only regular files count (the directory fsync afterwards is best effort).
        if os.path.isfile(f"/proc/self/fd/{fd}") or not os.path.exists("/proc/self/fd"):
            events.append("fsync")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    atomic_write(tmp_path / "x", b"data")
    assert events[:2] == ["fsync", "replace"]


def test_text_mode_is_utf8(tmp_path):
    target = tmp_path / "t.txt"
    with atomic_open(target, "w") as f:
        f.write("naïve ✓")
    assert target.read_bytes() == "naïve ✓".encode()


def test_rejects_non_write_modes(tmp_path):
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "x", "ab"):
            pass
    assert _names(tmp_path) == []


def test_append_line(tmp_path):
    target = tmp_path / "sub" / "results.jsonl"
    append_line(target, '{"a": 1}')
    append_line(target, '{"b": 2}')
    assert target.read_bytes() == b'{"a": 1}\n{"b": 2}\n'
    with pytest.raises(ValueError):
        append_line(target, "two\nlines")
    assert target.read_bytes() == b'{"a": 1}\n{"b": 2}\n'


def test_write_json_keeps_order_and_format(tmp_path):
    target = tmp_path / "r.json"
    obj = {"z": 1, "a": [1.5, None], "m": "é"}
    write_json(target, obj)
    text = target.read_text(encoding="utf-8")
    assert text == json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    assert list(json.loads(text)) == ["z", "a", "m"]


def test_write_json_unserialisable_touches_nothing(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_json(target, {"x": object()})
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["r.json"]


@pytest.mark.parametrize("name", ["map.npy", "map.data", "map"])
def test_save_npy_exact_path(tmp_path, name):
    a = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    save_npy(tmp_path / name, a)
    assert _names(tmp_path) == [name]  # np.save would have appended ".npy" to the last two
    b = np.load(tmp_path / name)
    assert b.dtype == np.float32 and b.shape == (2, 3)
    np.testing.assert_array_equal(a, b)


def test_save_npy_refuses_object_arrays(tmp_path):
    with pytest.raises(ValueError):
        save_npy(tmp_path / "o.npy", np.array([{}, 1], dtype=object))
    assert _names(tmp_path) == []

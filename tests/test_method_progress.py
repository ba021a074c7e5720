"""Long methods tell the runner how far they got (``xplain.report_progress``, issue 29.3)."""

from __future__ import annotations

import torch

import xplain
from xplain.plugins.registry import get_registry
from xplain.run.api import run_method


def test_integrated_gradients_reports_its_steps(tiny_model):
    heard = []
    method = get_registry().method("integrated-gradients")
    x = torch.rand(1, 3, 16, 16)
    params = {"steps": 8, "internal_batch": 2}
    from xplain.plugins.registry import validate_params

    values = validate_params(method.params, params, "ig")
    with xplain.progress_to(lambda d, t, w: heard.append((d, t, w))):
        run_method(tiny_model, method, x, torch.tensor([1]), values, 0)
    assert heard and all(t == 8 and w == "integration steps" for _, t, w in heard)
    assert [d for d, _, _ in heard] == sorted(d for d, _, _ in heard)  # monotone
    heard.clear()
    run_method(tiny_model, method, x, torch.tensor([1]), values, 0)  # nobody listening
    assert heard == []


def test_listeners_nest_and_are_restored():
    got = []
    with xplain.progress_to(lambda d, t, w: got.append(("outer", d))):
        with xplain.progress_to(lambda d, t, w: got.append(("inner", d))):
            xplain.report_progress(1, 2)
        xplain.report_progress(2, 2)
    xplain.report_progress(3, 3)
    assert got == [("inner", 1), ("outer", 2)]

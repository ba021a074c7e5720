"""Long methods tell the runner how far they got (``xplain.report_progress``, issue 29.3)."""

from __future__ import annotations

import torch

import xplain
from xplain.plugins.registry import get_registry
from xplain.run.api import run_method


def test_integrated_gradients_reports_its_steps(tiny_model):
    heard = []
    method = get_registry().method("integrated-gradients")
    x = torch.rand(3, 3, 16, 16)
    params = {"steps": 8, "internal_batch": 2}
    from xplain.plugins.registry import validate_params

    values = validate_params(method.params, params, "ig")
    t = torch.tensor([1, 0, 1])
    with xplain.progress_to(lambda d, t, w: heard.append((d, t, w))):
        run_method(tiny_model, method, x, t, values, 0)
    # image-steps: 3 images × 8 steps; a pass holds 2 image-steps: one step of images 0 and 1
    # (8 passes), then one step of image 2 alone (8 passes)
    assert all(t == 24 and w == "image-steps" for _, t, w in heard)
    assert [d for d, _, _ in heard] == [*range(2, 17, 2), *range(17, 25)]
    heard.clear()
    run_method(tiny_model, method, x, t, values, 0)  # nobody listening
    assert heard == []


def test_listeners_nest_and_are_restored():
    got = []
    with xplain.progress_to(lambda d, t, w: got.append(("outer", d))):
        with xplain.progress_to(lambda d, t, w: got.append(("inner", d))):
            xplain.report_progress(1, 2)
        xplain.report_progress(2, 2)
    xplain.report_progress(3, 3)
    assert got == [("inner", 1), ("outer", 2)]


def test_eval_bar_moves_per_image_inside_a_batched_call(tiny_cnn_path, tmp_path):
    # 4 images in one batch, IG (one image per pass) and deletion: the bar used to move twice
    # (after the method, after the metric); now the methods' and metrics' passes move it, so
    # it passes every image boundary inside the batch and never goes back
    import numpy as np
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype("uint8")).save(data / f"{i}.png")
    model = xplain.load_model(tiny_cnn_path, device="cpu")
    seen: list[tuple[float, int]] = []
    xplain.evaluate(
        model,
        data,
        methods=["integrated-gradients"],
        metrics=["deletion"],
        method_params={"integrated-gradients": {"steps": 4, "internal_batch": 1}},
        out_dir=tmp_path / "out",
        batch_size=4,
        plots=False,
        workers=0,
        progress=lambda done, total: seen.append((done, total)),
    )
    done = [d for d, _ in seen]
    assert all(t == 4 for _, t in seen)
    assert done == sorted(done) and done[0] == 0 and done[-1] == 4
    inside = [d for d in done if 0 < d < 4]
    assert len(inside) >= 16  # IG alone: 4 images × 4 steps, one pass each
    # the method (first half of the batch) crosses each image boundary: 0.5, 1.0, 1.5 images
    assert all(any(abs(d - b) < 1e-9 for d in done) for b in (0.5, 1.0, 1.5, 2.0))

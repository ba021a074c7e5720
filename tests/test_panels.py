"""Several methods in one ``xplain explain`` call, the side-by-side panel, and folders as input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import xplain
from xplain.cli.app import main
from xplain.data.images import Geometry
from xplain.output.panel import DPI, PanelRow, panel_figure
from xplain.run.explaining import _unique_stems, expand_images


def _cells(fig):
    """The figure's image cells (its colour-bar axes left out)."""
    return [ax for ax in fig.axes if ax.get_label() != "colorbar"]


def _grid(fig):
    """Distinct (x0, y0) positions of the figure's cells, rounded: columns and rows of the grid."""
    boxes = [ax.get_position() for ax in _cells(fig)]
    return sorted({round(b.x0, 4) for b in boxes}), sorted(
        {round(b.y0, 4) for b in boxes}, reverse=True
    )


def test_panel_layout_and_titles():
    image = Image.new("RGB", (30, 40), (120, 120, 120))
    g = Geometry((30, 40), (30, 40), (7, 12, 23, 28))
    rng = np.random.default_rng(0)
    methods = ["saliency", "tr-gbp", "input-iba"]
    rows = [
        PanelRow(3, "tabby cat", 0.7, {m: rng.standard_normal((16, 16)) for m in methods}),
        PanelRow(1, "$x$ <b>", 0.2, {m: rng.standard_normal((16, 16)) for m in methods[:2]}),
    ]
    fig = panel_figure(image, g, rows, methods, title="photo.png")
    cells = _cells(fig)
    assert len(cells) == 2 * (1 + len(methods))
    assert len(fig.axes) - len(cells) == 5  # one colour bar per drawn map
    cols, ys = _grid(fig)
    assert len(cols) == 1 + len(methods) and len(ys) == 2
    titles = [[ax.get_title() for ax in cells[r * 4 : (r + 1) * 4]] for r in range(2)]
    assert titles[0] == ["tabby cat (3)\np = 0.700", "saliency", "tr-gbp", "input-iba"]
    assert titles[1][0] == "\\$x\\$ <b> (1)\np = 0.200"  # '$' escaped: never parsed as mathtext
    assert titles[1][3] == "input-iba\n(no map)"  # a method without a map leaves the cell empty
    first_row = cells[:4]
    assert all(ax.title.get_fontsize() >= 9 for ax in cells)  # legible at 100 % zoom
    assert all(len(ax.images) == 1 for ax in first_row)
    assert (
        first_row[1].images[0].get_array().shape[:2]
        == (first_row[0].images[0].get_array().shape[:2])
    )  # overlays have the photo's (thumbnail) shape
    w, h = fig.get_size_inches()
    assert w > h  # four portrait cells side by side, two rows


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_several_methods_write_each_methods_files_and_one_panel(
    tiny_cnn_path, rgb_image, tmp_path, capsys, monkeypatch
):
    import xplain.run.api

    loads = []
    real = xplain.run.api.load_model
    monkeypatch.setattr(
        xplain.run.api, "load_model", lambda *a, **k: loads.append(1) or real(*a, **k)
    )
    out = tmp_path / "out"
    records = _run(
        [
            "explain",
            str(tiny_cnn_path),
            str(rgb_image),
            "--method",
            "saliency,gradient",
            "-m",
            "random",
            "--target",
            "top5",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
            "--preset",
            "unit",
            "-p",
            "gradient.reduce=mean",
        ],
        capsys,
    )
    assert len(loads) == 1  # the model is loaded once for all methods
    assert len(records) == 3 * 4  # three methods x four classes
    assert {r["method"] for r in records} == {"saliency", "gradient", "random"}
    panels = sorted(out.glob("*.panel.png"))
    assert [p.name for p in panels] == ["photo.panel.png"]
    for r in records:
        assert r["files"]["panel"] == str(panels[0])
        for kind in ("heatmap", "overlay", "npy", "json"):
            assert Path(r["files"][kind]).exists()
    # each method's map is what running it alone gives
    single = _run(
        [
            "explain",
            str(tiny_cnn_path),
            str(rgb_image),
            "--method",
            "gradient",
            "--target",
            "top5",
            "--out",
            str(tmp_path / "one"),
            "--device",
            "cpu",
            "--json",
            "--preset",
            "unit",
            "-p",
            "reduce=mean",
        ],
        capsys,
    )
    assert "panel" not in single[0]["files"]  # one method: no panel unless asked for
    for r in single:
        multi = next(m for m in records if m["method"] == "gradient" and m["target"] == r["target"])
        np.testing.assert_allclose(
            np.load(multi["files"]["npy"]), np.load(r["files"]["npy"]), rtol=1e-6
        )
    # the panel: 1 + 3 columns, 4 rows (top5 of a 4-class model)
    image = Image.open(panels[0])
    rows = [PanelRow(t, None, 0.5, {}) for t in range(4)]
    fig = panel_figure(
        Image.open(rgb_image),
        Geometry((30, 40), (30, 40), (0, 0, 30, 40)),
        rows,
        ["saliency", "gradient", "random"],
        title="photo.png",
    )
    assert image.size == tuple(round(v * DPI) for v in fig.get_size_inches())


def test_method_list_errors(tiny_cnn_path, rgb_image, tmp_path, capsys):
    for argv in (
        ["-m", "saliency,saliency"],
        ["-m", "saliency,nope"],
        ["-m", "saliency,gradient", "-p", "reduce=sum"],
    ):
        code = main(
            ["explain", str(tiny_cnn_path), str(rgb_image), "--out", str(tmp_path / "x"), *argv]
        )
        assert code == xplain.ExitCode.USAGE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0]
    assert not (tmp_path / "x").exists()


def test_unique_stems():
    assert _unique_stems(["a", "b"]) == ["a", "b"]
    assert _unique_stems(["a", "a", "a-2", "A"]) == ["a", "a-3", "a-2", "A-4"]


def test_folder_input_recursive_sorted_with_sub_folder_stems(
    tiny_cnn_path, rgb_image, tmp_path, capsys
):
    root = tmp_path / "images"
    photo = Image.open(rgb_image)
    for rel in (
        "b.png",
        "a.png",
        "sub/a.png",
        "sub/b.jpg",
        "sub2/deeper/a.png",
        "sub__a.png",
        ".hidden/c.png",
        "sub/.d.png",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        photo.save(root / rel)
    (root / "notes.txt").write_text("not an image")
    images, stems = expand_images([root, rgb_image])
    assert [p.relative_to(root).as_posix() for p in images[:-1]] == [
        "a.png",
        "b.png",
        "sub/a.png",
        "sub/b.jpg",
        "sub2/deeper/a.png",
        "sub__a.png",
    ]
    assert stems == ["a", "b", "sub__a", "sub__b", "sub2__deeper__a", "sub__a-2", "photo"]
    out = tmp_path / "out"
    records = _run(
        [
            "explain",
            str(tiny_cnn_path),
            str(root),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
            "--preset",
            "unit",
        ],
        capsys,
    )
    assert [r["image"] for r in records] == [str(p) for p in images[:-1]]
    npys = sorted(p.name.split(".")[0] for p in out.glob("*.npy"))
    assert npys == sorted(stems[:-1])  # one map per image, none overwritten
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    assert (
        main(["explain", str(tiny_cnn_path), str(empty), "--out", str(out)])
        == xplain.ExitCode.INPUT
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no images" in err[0] and str(empty) in err[0]


@pytest.mark.parametrize(
    "flag", [["--colorbar"], ["--grey"], ["--colour-photo"], ["--percentile", "100"]]
)
def test_render_flags_reach_the_files(tiny_cnn_path, rgb_image, tmp_path, capsys, flag):
    out = tmp_path / "o"
    rec = _run(
        [
            "explain",
            str(tiny_cnn_path),
            str(rgb_image),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
            "--preset",
            "unit",
            *flag,
        ],
        capsys,
    )[0]
    assert rec["render"]["colorbar"] == ("--colorbar" in flag)
    assert rec["render"]["grey"] == {"--grey": True, "--colour-photo": False}.get(flag[0])
    # saliency is non-negative: sequential, and the photo in colour unless --grey
    assert rec["scheme"] == {
        "signed": False,
        "colormap": "inferno",
        "grey_photo": flag == ["--grey"],
    }
    heatmap = Image.open(rec["files"]["heatmap"])
    assert (heatmap.size != (16, 16)) == ("--colorbar" in flag)
    overlay = Image.open(rec["files"]["overlay"])  # with --colorbar: a figure with its bar
    assert (overlay.size != Image.open(rgb_image).size) == ("--colorbar" in flag)

"""Stage 5 of an evaluation, the pictures: mean curves (``plots/*.png``), the montage of maps,
and the views of the images the report shows (``maps/NNNNN.image.png``).

Why a module of its own: everything here turns finished numbers into images; nothing here
computes a score, so the run stages (:mod:`xplain.run`) stay free of matplotlib.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from ..data.datasets import Sample
from ..data.images import Preprocess, load_image
from ..errors import XplainError
from ..fileio import atomic_write
from ..untrusted import path_text, printable, safe_stem
from .render import colorize, png_bytes


def to_pixels(arr: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """A preprocessed C×H×W array back to [0, 1] pixel values, H×W×C (H×W for one channel)."""
    img = (
        arr * np.asarray(preprocess.std)[:, None, None] + np.asarray(preprocess.mean)[:, None, None]
    )
    img = np.clip(img / (preprocess.scale * 255.0), 0, 1)
    return img.transpose(1, 2, 0).squeeze(axis=2) if img.shape[0] == 1 else img.transpose(1, 2, 0)


def keep_view(
    out: Path, index: int, sample: Sample, arr: np.ndarray, preprocess: Preprocess
) -> None:
    """Save what the model saw of image ``index`` (``maps/NNNNN.image.png``) and where it came
    from (``maps/NNNNN.json``), so the report needs nothing outside OUT."""
    from PIL import Image

    pixels = np.rint(to_pixels(arr, preprocess) * 255.0).astype(np.uint8)
    atomic_write(out / "maps" / f"{index:05d}.image.png", png_bytes(Image.fromarray(pixels)))
    facts = {"image": str(sample.path), "label": sample.label}
    atomic_write(out / "maps" / f"{index:05d}.json", (json.dumps(facts) + "\n").encode())


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_plots(
    out: Path,
    summary: dict,
    samples: list[Sample],
    methods: list[str],
    montage: int,
    preprocess: Preprocess,
) -> list[Path]:
    """One PNG per curve (a line per method) and a montage; Agg canvas, no pyplot state."""
    from matplotlib.figure import Figure

    written = []
    for k, curve in summary["curves"].items():
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        import matplotlib

        colours = matplotlib.colormaps["tab20"].colors  # type: ignore[attr-defined] # 20 distinct colours: methods stay apart
        ax.set_prop_cycle(color=colours[0::2] + colours[1::2])
        for name, ys in curve["methods"].items():
            ys = [np.nan if v is None else v for v in ys]
            xs = curve["x"] if len(curve["x"]) == len(ys) else np.linspace(0, 1, len(ys))
            ax.plot(xs, ys, label=name, linestyle="--" if name == "random" else "-")
        ax.set_xlabel(curve["xlabel"] or "step")
        ax.set_ylabel(k)
        ax.set_title(k)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = out / "plots" / f"{safe_stem(k)}.png"  # score names come from plugins
        atomic_write(path, _png(fig))
        written.append(path)
    montage_path = _montage(out, samples[:montage], methods, preprocess)
    if montage_path is not None:
        written.append(montage_path)
    return written


def _montage(
    out: Path, samples: list[Sample], methods: list[str], preprocess: Preprocess
) -> Path | None:
    from matplotlib.figure import Figure

    rows = []
    for i, s in enumerate(samples):
        maps = {m: out / "maps" / f"{i:05d}.{m}.npy" for m in methods}
        if not any(p.exists() for p in maps.values()):
            continue
        try:
            arr, _ = preprocess(load_image(s.path))
        except (XplainError, OSError):
            continue
        rows.append((s, to_pixels(arr, preprocess), maps))
    if not rows:
        return None
    cols = len(methods) + 1
    fig = Figure(figsize=(1.6 * cols, 1.7 * len(rows)))
    for r, (s, img, maps) in enumerate(rows):
        ax = fig.add_subplot(len(rows), cols, r * cols + 1)
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_title(printable(path_text(s.path.name)), fontsize=6)
        ax.axis("off")
        for c, m in enumerate(methods, 2):
            ax = fig.add_subplot(len(rows), cols, r * cols + c)
            if maps[m].exists():
                ax.imshow(colorize(np.load(maps[m])))
            if r == 0:
                ax.set_title(m, fontsize=6)
            ax.axis("off")
    fig.tight_layout()
    path = out / "plots" / "montage.png"
    atomic_write(path, _png(fig))
    return path

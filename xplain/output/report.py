"""``DIR/report.html``: one self-contained page for an ``xplain eval`` run.

The page is built from the files in DIR only — ``summary.json``, ``results*.jsonl`` (sharded runs
write several), ``plots/*.png`` and ``maps/`` (the first images' maps, the model's view of each
image and which file it came from) — so ``xplain eval`` and ``xplain eval summarize DIR`` can both
(re)write it without the model or the data.  Every picture is embedded as a ``data:`` URI: the page
is one file that can be mailed or archived, and it loads nothing from anywhere.

Everything that comes from outside (class labels, file names, method and metric names, parameter
values, error messages) is escaped with :func:`html.escape`, and the page carries a
Content-Security-Policy that allows no script at all and images from ``data:`` only: a label such
as ``<script>`` is shown as text, and even a missed escape could not run code or reach the network.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..data.images import Geometry
from ..errors import InputDataError
from ..fileio import atomic_write
from ..run.records import read_results
from .render import overlay_image, png_bytes

__all__ = ["write_report", "report_html", "REPORT", "CSP"]

REPORT = "report.html"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
THUMB = 160  #: display size of a per-image cell, CSS pixels

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em}
td,th{padding:.25em .6em;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
.settings td{text-align:left;white-space:normal}.best{font-weight:bold;color:#0a6b2d}
.se{color:#888;font-size:.85em}.scroll{overflow-x:auto}
figure{display:inline-block;margin:.4em;vertical-align:top}figcaption{font-size:.8em;text-align:center}
.cell img{width:160px;height:auto;image-rendering:pixelated}.cell figcaption{max-width:160px}
.curves img{width:440px;max-width:100%}.montage img{max-width:100%}.error{color:#b00}
.scores{font-size:.75em;color:#444;text-align:left;white-space:normal}
"""


# ----------------------------------------------------------------------------- reading DIR
def _read_summary(out: Path) -> dict:
    path = out / "summary.json"
    if not path.is_file():
        raise InputDataError(
            "no summary.json here: run `xplain eval` (or `xplain eval summarize`) first", path=out
        )
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputDataError(f"cannot read summary.json: {e}", path=path) from None
    if not isinstance(summary, dict) or not isinstance(summary.get("table"), dict):
        raise InputDataError("summary.json is not an xplain eval summary", path=path)
    return summary


def _records(out: Path, summary: dict) -> dict[tuple[str, str], dict]:
    """The last record per (image, method) of this summary's configuration (method parameters
    and seed), from every ``results*.jsonl`` in DIR; a scored record beats an error line."""
    methods = summary.get("methods") or {}
    chosen: dict[tuple[str, str], dict] = {}
    for path in sorted(out.glob("results*.jsonl")):
        for r in read_results(path):
            name = r.get("method")
            if (
                name not in methods
                or r.get("params") != methods[name]
                or r.get("seed") != summary.get("seed")
            ):
                continue
            key = (str(r.get("image")), name)
            if "error" not in r or "error" in chosen.get(key, {"error": 1}):
                chosen[key] = r
    return chosen


def _shown_images(out: Path) -> list[tuple[int, dict]]:
    """(index, facts) of the images whose maps eval kept: ``maps/NNNNN.json`` files, in order."""
    shown = []
    for path in sorted((out / "maps").glob("[0-9][0-9][0-9][0-9][0-9].json")):
        try:
            facts = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(facts, dict):
            shown.append((int(path.stem), facts))
    return shown


# ----------------------------------------------------------------------------- HTML pieces
def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{_data_uri(png)}" alt="{_e(alt)}">'


def _fmt(v: Any) -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        return f"{v:.3g}"
    return "n/a"


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items())) or "defaults"


def _settings(summary: dict, written: str) -> str:
    rows = [
        ("model", summary.get("model", "")),
        ("digest", summary.get("digest", "")),
        ("data", summary.get("data", "")),
        ("images", summary.get("images", "")),
        ("seed", summary.get("seed", "")),
        ("written", written),
    ]
    rows += [(f"method {n}", _params(p)) for n, p in (summary.get("methods") or {}).items()]
    rows += [(f"metric {n}", _params(p)) for n, p in (summary.get("metrics") or {}).items()]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<h2>Settings</h2><table class="settings">{body}</table>'


def _summary_table(summary: dict) -> str:
    scores = summary.get("scores") or []
    up = summary.get("higher_is_better") or {}
    best = summary.get("best") or {}
    head = "".join(f"<th>{_e(k)} {'↑' if up.get(k, True) else '↓'}</th>" for k in scores)
    rows = []
    for name, per in summary["table"].items():
        cells = []
        for k in scores:
            cell = per.get(k) or {}
            text = _fmt(cell.get("mean"))
            se = cell.get("stderr")
            extra = f' <span class="se">± {_fmt(se)}</span>' if se is not None else ""
            if best.get(k) == name:
                cells.append(f'<td class="best" title="best">★ {text}{extra}</td>')
            else:
                cells.append(f"<td>{text}{extra}</td>")
        errors = (summary.get("errors") or {}).get(name, 0)
        rows.append(f"<tr><td>{_e(name)}</td>{''.join(cells)}<td>{_e(errors)}</td></tr>")
    return (
        "<h2>Summary</h2><p>Mean ± standard error over images; ★ marks the best method per score "
        "(↑ higher / ↓ lower is better).</p>"
        f'<div class="scroll"><table><tr><th>method</th>{head}<th>errors</th></tr>{"".join(rows)}'
        "</table></div>"
    )


def _plots(out: Path) -> str:
    plots = sorted(p for p in (out / "plots").glob("*.png") if p.name != "montage.png")
    parts = []
    if plots:
        figs = "".join(
            f"<figure>{_img(p.read_bytes(), p.stem)}<figcaption>{_e(p.stem)}</figcaption></figure>"
            for p in plots
        )
        parts.append(f'<h2>Curves</h2><div class="curves">{figs}</div>')
    montage = out / "plots" / "montage.png"
    if montage.is_file():
        parts.append(
            f'<h2>Montage</h2><div class="montage">{_img(montage.read_bytes(), "montage")}</div>'
        )
    return "".join(parts)


def _cell(png: bytes | None, caption: str, scores: str = "") -> str:
    picture = _img(png, caption) if png is not None else ""
    return f'<figure class="cell">{picture}<figcaption>{_e(caption)}{scores}</figcaption></figure>'


def _score_text(record: dict | None) -> str:
    if record is None:
        return '<div class="scores">not evaluated</div>'
    if "error" in record:
        return f'<div class="scores error">{_e(record["error"])}</div>'
    items = ", ".join(f"{_e(k)} {_fmt(v)}" for k, v in (record.get("scores") or {}).items())
    return f'<div class="scores">{items}</div>'


def _overlay_png(photo: Image.Image, path: Path) -> bytes | None:
    try:
        m = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if m.ndim != 2 or m.shape != (photo.height, photo.width):
        return None
    g = Geometry(photo.size, photo.size, (0, 0, photo.width, photo.height))
    return png_bytes(overlay_image(photo, m, g))


def _image_row(out: Path, index: int, facts: dict, methods: list[str], records: dict) -> str:
    image = str(facts.get("image", ""))
    try:
        with Image.open(out / "maps" / f"{index:05d}.image.png") as im:
            photo = im.convert("RGB")
    except OSError:
        return ""
    first: dict = next((records[(image, m)] for m in methods if (image, m) in records), {})
    label = first.get("target_label") or first.get("target", "")
    caption = f"{Path(image).name} · target {label}"
    if "probability" in first:
        caption += f" · p = {first['probability']:.3f}"
    cells = [_cell(png_bytes(photo), caption)]
    for m in methods:
        cells.append(
            _cell(
                _overlay_png(photo, out / "maps" / f"{index:05d}.{m}.npy"),
                m,
                _score_text(records.get((image, m))),
            )
        )
    return f'<div class="row">{"".join(cells)}</div>'


def _images(out: Path, summary: dict, records: dict) -> str:
    methods = list(summary.get("methods") or summary["table"])
    rows = [_image_row(out, i, facts, methods, records) for i, facts in _shown_images(out)]
    rows = [r for r in rows if r]
    if not rows:
        return ""
    return (
        f"<h2>Images</h2><p>The first {len(rows)} images: the model's input, then each method's "
        "map over it (opacity ∝ |map|), with the image's scores.</p>" + "".join(rows)
    )


def report_html(out_dir: str | Path) -> str:
    """The report page for the eval run in ``out_dir``, as a string (see :func:`write_report`)."""
    out = Path(out_dir)
    summary = _read_summary(out)
    written = datetime.datetime.fromtimestamp(
        (out / "summary.json").stat().st_mtime, datetime.timezone.utc
    ).strftime("%Y-%m-%d %H:%M UTC")
    model = Path(str(summary.get("model", ""))).name
    title = f"xplain eval: {model} on {summary.get('images', '?')} images"
    body = (
        f"<h1>{_e(title)}</h1>"
        + _settings(summary, written)
        + _summary_table(summary)
        + _plots(out)
        + _images(out, summary, _records(out, summary))
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_report(out_dir: str | Path) -> Path:
    """(Re)write ``DIR/report.html`` from what DIR holds; returns its path.

    Reads only DIR: ``summary.json`` (required), ``results*.jsonl``, ``plots/*.png`` and ``maps/``.
    Written atomically, so a reader never sees half a page."""
    out = Path(out_dir)
    path = out / REPORT
    # undecodable file names (lone surrogates) become \udcNN text instead of failing the report
    atomic_write(path, report_html(out).encode("utf-8", "backslashreplace"))
    return path

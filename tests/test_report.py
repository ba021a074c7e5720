"""``DIR/report.html``: self-contained, escaped, built from DIR alone; it renders in Chromium."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xplain.cli.app import main
from xplain.errors import InputDataError
from xplain.output.report import CSP, write_report

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MODEL = str(SAMPLES / "shapes_cnn.onnx")
HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    'a&b "q"',
    "</td><script>alert(3)</script>",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An eval run whose class names and file names are HTML."""
    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    data.mkdir()
    for src, name in (
        ("shapes_000.png", "<img src=y onerror=alert(4)>.png"),
        ("shapes_001.png", "b&c.png"),
        ("shapes_002.png", "plain.png"),
    ):
        shutil.copy(SAMPLES / "shapes_eval" / "images" / src, data / name)
    classes = root / "classes.txt"
    classes.write_text("\n".join(HOSTILE) + "\n")
    out = root / "run"
    assert (
        main(
            [
                "eval",
                MODEL,
                str(data),
                "--methods",
                "saliency,random",
                "--metrics",
                "deletion",
                "--metric-param",
                "deletion.step=512",
                "--class-names",
                str(classes),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--batch-size",
                "3",
                "--montage",
                "2",
                "--report-images",
                "3",
            ]
        )
        == 0
    )
    return out


def test_report_is_escaped_embedded_and_built_from_dir_alone(run_dir, tmp_path):
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower() and "<img src=x" not in page and "<img src=y" not in page
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    for label in {r["target_label"] for r in records}:
        assert html.escape(label) in page  # shown, as text
    assert html.escape("<img src=y onerror=alert(4)>.png") in page
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(sources) == 1 + 1 + 3 * 3  # curve, montage, 3 images x (input + 2 methods)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert "href=" not in text and "url(" not in text and "://" not in text  # nothing to fetch
    assert f'content="{CSP}"' in page
    per_image = re.findall(
        r'<div class="scores"><span>deletion <b>([0-9.e-]+)</b></span></div>', page
    )
    assert len(per_image) == 3 * 2  # every image x method shows its own score
    scored = {(r["image"], r["method"]): r["scores"]["deletion"] for r in records}
    assert sorted(float(v) for v in per_image) == pytest.approx(sorted(scored.values()), rel=2e-3)
    # the summary: mean ± standard error, the best method per score marked
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best"]["deletion"]
    row = re.search(rf"<tr><td>{best}</td>(.*?)</tr>", page).group(1)
    assert "★" in row and "±" in row
    other = ({"saliency", "random"} - {best}).pop()
    assert "★" not in re.search(rf"<tr><td>{other}</td>(.*?)</tr>", page).group(1)
    # DIR alone is enough: a copy elsewhere, with the data gone, gives the same page
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(run_dir.parent / "data")
    try:
        assert write_report(copy).read_text(encoding="utf-8") == page
    finally:
        (run_dir.parent / "data").mkdir()
    with pytest.raises(InputDataError, match="summary.json"):
        write_report(tmp_path / "empty")


_CHECK = """
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push('error: ' + (e.message || e.target.tagName));
}, true);
document.addEventListener('securitypolicyviolation', function (e) {
  window.__errors.push('csp: ' + e.blockedURI);
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                .map(function (i) { return i.alt; });
  var pre = document.createElement('pre');
  pre.id = 'xplain-check';
  pre.textContent = JSON.stringify({images: imgs.length, bad: bad, errors: window.__errors});
  document.body.appendChild(pre);
});
"""


def _chromium() -> str | None:
    return next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary (apt-get install chromium)")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    """The page, under its own CSP (plus the hash of one checking script), loads in a real browser
    with no errors and no blocked requests, and every image it references decodes."""
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(_CHECK.encode()).digest()).decode()
    page = page.replace(f'content="{CSP}"', f"content=\"{CSP}; script-src 'sha256-{digest}'\"")
    page = page.replace("<head>", f"<head><script>{_CHECK}</script>", 1)
    check = run_dir / "check.html"
    check.write_text(page, encoding="utf-8")
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        check.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    found = re.search(r'<pre id="xplain-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["images"] == 11 and result["bad"] == [] and result["errors"] == []

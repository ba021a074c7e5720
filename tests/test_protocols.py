"""Evaluation protocols (issue 23): the shipped LATEC file, bad protocol files, the
aggregation (medians, ranks, mean rank per criterion, Kendall τ-b agreement) and a CLI run."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from xplain.cli.app import app
from xplain.errors import UsageError
from xplain.plugins.registry import Registry
from xplain.run import protocols as P

REG = Registry().discover()


def test_latec_ships_its_17_methods_and_20_metrics_none_silently_dropped():
    p = P.load_protocol("latec", REG)
    assert "latec" in P.known_protocols()
    assert len(p.methods) == 17 and len(p.metrics) == 20
    assert all(bool(e.plugin) != bool(e.missing) for e in (*p.methods, *p.metrics))
    # every LATEC method has an xplain plugin now, with LATEC's released hyperparameters
    assert not [e.name for e in p.methods if e.missing]
    plugins = {e.name: e.plugin for e in p.methods}
    assert (
        plugins["scorecam"] == "score-cam" and plugins["attentionlrp"] == "transformer-attribution"
    )
    eg = next(e for e in p.methods if e.name == "expectedgradients")
    assert eg.params == {"n_samples": 40, "stdevs": 0.001, "baselines": "batch"}
    assert next(e for e in p.methods if e.name == "deeplift").params["eps"] == 1e-9
    assert [e.name for e in p.metrics if e.missing] == []
    suff = next(e for e in p.metrics if e.name == "sufficiency")
    assert suff.plugin == "sufficiency" and suff.params == {"threshold": 0.9, "group": 2}
    crit = {c: [e.name for e in p.metrics if e.criterion == c] for c in p.criteria}
    assert [len(crit[c]) for c in ("faithfulness", "robustness", "complexity")] == [11, 6, 3]
    ig = next(e for e in p.methods if e.name == "integratedgradients")
    assert ig.plugin == "integrated-gradients" and ig.params["steps"] == 30


@pytest.mark.parametrize(
    "content,message",
    [
        ({"name": "x", "methods": [], "metrics": [], "critera": []}, "unknown key 'critera'"),
        (
            {"methods": [{"method": "gradient", "parms": {}}], "metrics": [{"metric": "ebpg"}]},
            "methods[0]: unknown key 'parms'",
        ),
        (
            {"methods": [{"method": "gradient"}], "metrics": [{"metric": "ebpgg"}]},
            "unknown metric 'ebpgg'; known metrics:",
        ),
        (
            {"methods": [{"name": "lime"}], "metrics": [{"metric": "ebpg"}]},
            "give 'method' or say why it is 'missing'",
        ),
        (
            {
                "methods": [{"method": "gradient", "params": {"stepz": 3}}],
                "metrics": [{"metric": "ebpg"}],
            },
            "has no parameter 'stepz'",
        ),
    ],
)
def test_bad_protocol_files_are_one_line(tmp_path, content, message):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(content))
    with pytest.raises(UsageError) as err:
        P.load_protocol(str(f), REG)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(f) in str(err.value) or "p.json" in str(err.value)


def test_unknown_protocol_lists_the_known_ones():
    with pytest.raises(UsageError, match="unknown protocol 'latex': known ones are latec"):
        P.load_protocol("latex", REG)


def test_kendall_tau_b_equals_scipy():
    scipy = pytest.importorskip("scipy.stats")
    cases = [([1, 2, 3, 4], [1, 3, 2, 4]), ([1, 2, 2, 3, 5], [2, 1, 1, 4, 3]), ([1, 2], [2, 1])]
    for x, y in cases:
        assert P.kendall_tau_b(x, y) == pytest.approx(scipy.kendalltau(x, y).statistic)
    assert math.isnan(P.kendall_tau_b([1, 1, 1], [1, 2, 3]))


def test_aggregation_hand_case(tmp_path):
    """Three methods, two images; sparseness (higher better), complexity (lower better)."""
    f = tmp_path / "p.json"
    f.write_text(
        json.dumps(
            {
                "criteria": ["complexity", "faithfulness"],
                "methods": [{"method": "gradient"}, {"method": "saliency"}, {"method": "random"}],
                "metrics": [
                    {"metric": "sparseness", "criterion": "complexity"},
                    {"metric": "complexity", "criterion": "complexity"},
                    {"metric": "deletion", "criterion": "faithfulness"},
                ],
            }
        )
    )
    p = P.load_protocol(str(f), REG)
    values = {  # per method: (sparseness, complexity, deletion) for image 1, image 2
        "gradient": [(0.5, 3.0, 0.2), (0.7, 5.0, 0.4)],  # medians .6, 4, .3
        "saliency": [(0.8, 2.0, 0.1), (0.8, 2.0, 0.1)],  # .8, 2, .1
        "random": [(0.1, 9.0, 0.9), (0.3, 7.0, float("nan"))],  # .2, 8, .9 (NaN skipped)
    }
    records = [
        {"method": m, "scores": dict(zip(("sparseness", "complexity", "deletion"), v))}
        for m, rows in values.items()
        for v in rows
    ]
    r = P.aggregate(records, p, REG)
    assert r["median"]["sparseness"] == pytest.approx(
        {"gradient": 0.6, "saliency": 0.8, "random": 0.2}
    )
    assert r["rank"]["sparseness"] == {"saliency": 1, "gradient": 2, "random": 3}
    assert r["rank"]["complexity"] == {"saliency": 1, "gradient": 2, "random": 3}
    assert r["rank"]["deletion"] == {"saliency": 1, "gradient": 2, "random": 3}  # lower is better
    assert r["criterion_rank"]["complexity"]["gradient"] == 2
    assert r["overall_rank"] == {"saliency": 1, "gradient": 2, "random": 3}
    assert r["agreement"]["sparseness"]["complexity"] == pytest.approx(1.0)
    assert r["count"]["deletion"]["random"] == 1
    assert "| saliency | 1 | 1 | 1 |" in P.markdown(r)


@pytest.fixture(scope="module")
def small_protocol(tmp_path_factory):
    f = tmp_path_factory.mktemp("proto") / "small.json"
    f.write_text(
        json.dumps(
            {
                "name": "small",
                "criteria": ["faithfulness", "complexity"],
                "methods": [
                    {"method": "gradient"},
                    {"method": "saliency"},
                    {"method": "attention-rollout"},
                    {"name": "lime", "missing": "not in xplain"},
                ],
                "metrics": [
                    {"metric": "sparseness", "criterion": "complexity"},
                    {"metric": "deletion", "criterion": "faithfulness", "params": {"step": 512}},
                    {"name": "sufficiency", "criterion": "faithfulness", "missing": "per batch"},
                ],
            }
        )
    )
    return f


def test_cli_protocol_run_names_what_it_cannot_run_and_ranks_the_rest(
    tiny_cnn_path, rgb_image, small_protocol, tmp_path
):
    data = rgb_image.parent
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(tiny_cnn_path),
            str(data),
            "--protocol",
            str(small_protocol),
            "--out",
            str(out),
            "--no-plots",
            "--report-images",
            "0",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    r = json.loads((out / "protocol.json").read_text())
    assert r["methods"] == ["gradient", "saliency"]
    assert list(r["not_applicable"]) == ["attention-rollout"]
    assert r["missing_methods"] == {"lime": "not in xplain"}
    assert r["missing_metrics"] == {"sufficiency": "per batch"}
    assert "1 not applicable to this model: attention-rollout" in result.output
    assert (out / "protocol.md").read_text().startswith("# Protocol small")
    # each record times its method and every metric it ran (wall, CPU seconds per image)
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    scored = [r for r in records if r.get("scores")]
    assert scored and all(r["cpu_seconds"] >= 0 for r in scored)
    for r in scored:
        assert set(r["metric_seconds"]) == {"sparseness", "deletion"}
        assert all(len(v) == 2 and min(v) >= 0 for v in r["metric_seconds"].values())
    # summarize recomputes the ranking from the results files
    again = CliRunner().invoke(app, ["eval-summarize", str(out), "--no-plots"])
    assert again.exit_code == 0 and "protocol small" in again.output


def test_cli_protocol_errors_are_one_line_exit_2(tiny_cnn_path, rgb_image, tmp_path, capsys):
    from .onnx_factory import cli_error

    base = ["eval", tiny_cnn_path, rgb_image.parent, "--out", tmp_path / "o"]
    cli_error(capsys, [*base, "--protocol", "nope"], 2, "unknown protocol 'nope'", "latec")
    cli_error(capsys, [*base, "--protocol", "latec", "--methods", "gradient"], 2, "--methods")
    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps({"methods": [{"method": "gradient"}], "metricz": []}))
    cli_error(capsys, [*base, "--protocol", bad], 2, "unknown key 'metricz'", str(bad))

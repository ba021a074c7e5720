"""Seeds of the stochastic Quantus-family metrics (issue 23): the same seed gives byte-identical
scores, another seed other draws (Quantus 0.6 has no seed for these)."""

from __future__ import annotations

import torch

import xplain

from .quantus_family_common import digits_batch, gradient, score

CASES = [
    ("faithfulness-correlation", {"nr_runs": 6, "subset_size": 30}),
    ("monotonicity-correlation", {"features_in_step": 49, "nr_samples": 2}),
    ("road", {"percentages": "30,60,90", "score": "probability"}),
    ("max-sensitivity", {"nr_samples": 2}),
    ("random-logit", {}),
    ("smooth-mprt", {"nr_samples": 3, "layers": 2}),
    ("efficient-mprt", {"layers": 2}),
]


def test_same_seed_same_bytes_other_seed_other_draws():
    model, x, t = digits_batch()
    x, t = x[:2], t[:2]
    a = gradient(model.graph, x, t)

    def explain(xx, tt):
        return xplain.Attribution(gradient(model.graph, xx, tt))

    for name, params in CASES:
        runs = [
            score(name, model, x, t, a, params=dict(params), seed=s, explain=explain)[name]
            for s in (3, 3, 4)
        ]
        assert runs[0].tobytes() == runs[1].tobytes(), name
        assert not torch.equal(torch.from_numpy(runs[0]), torch.from_numpy(runs[2])), name

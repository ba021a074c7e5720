"""Rule composites by name give exactly the rules the built-in methods apply."""

from __future__ import annotations

import pytest
import torch

import xplain


def _input_gradient(model, chooser, x, targets):
    with xplain.apply_rules(model, chooser), torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xg).gather(1, targets[:, None]).sum(), xg)
    return g


def test_named_composites_reproduce_the_methods(tiny_model):
    x = tiny_model.example_input(2, seed=6)
    t = torch.tensor([1, 3])
    guided = _input_gradient(tiny_model, xplain.composite("guided"), x, t).sum(dim=1)
    want = xplain.explain(tiny_model, x, t, "guided-backprop", params={"reduce": "sum"}).maps
    torch.testing.assert_close(guided, want)
    relevance = (
        x * _input_gradient(tiny_model, xplain.composite("lrp-epsilon", eps=1e-6), x, t)
    ).sum(dim=1)
    torch.testing.assert_close(relevance, xplain.explain(tiny_model, x, t, "lrp-epsilon").maps)
    plain = _input_gradient(
        tiny_model, xplain.composite("plain"), x, t
    )  # the rule form of the gradient
    torch.testing.assert_close(plain, _input_gradient(tiny_model, lambda *a: None, x, t))
    assert {"guided", "deconvnet", "lrp-epsilon", "lrp-zplus"} <= set(xplain.composites())


def test_unknown_composite_lists_the_registered_ones():
    with pytest.raises(xplain.UsageError, match="unknown rule composite 'nope'"):
        xplain.composite("nope")
    with pytest.raises(ValueError, match="already registered"):
        xplain.register_composite("guided", lambda: None)

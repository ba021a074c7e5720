"""``lrp-epsilon`` and ``lrp-zplus``: layer-wise relevance propagation on the converted graph."""

import xplain


def _explain_epsilon(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import torch

    with (
        xplain.apply_rules(model, xplain.lrp_rules("epsilon", params["epsilon"])),
        torch.enable_grad(),
    ):
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        (c,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xg)
    relevance = xg.detach() * c
    return xplain.Attribution(
        relevance.sum(dim=1),
        info={"relevance_sum": relevance.flatten(1).sum(1).tolist()},
        sample_info=[{"relevance_sum": v} for v in relevance.flatten(1).sum(1).tolist()],
    )


def _explain_zplus(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import dataclasses

    import torch

    if (
        model.spec.fixed_batch and x.shape[0] > 1
    ):  # taps below must see each graph call's whole batch
        parts = [
            _explain_zplus(dataclasses.replace(request, x=x[i : i + 1], targets=targets[i : i + 1]))
            for i in range(x.shape[0])
        ]
        return xplain.Attribution(
            torch.cat([p.maps for p in parts]),
            info={"relevance_sum": [v for p in parts for v in p.info["relevance_sum"]]},
            sample_info=[i for p in parts for i in p.sample_info],
        )

    first = xplain.first_weight_layer(model)
    if first is None:
        raise xplain.UsageError("lrp-zplus needs a conv or linear layer")
    source = model.node(first).args[0].name  # the first layer's input (x, or x flattened/padded)
    chooser = xplain.lrp_rules("zplus", params["epsilon"], skip=(first,))
    with (
        xplain.apply_rules(model, chooser),
        model.tap([source]) as tap_in,
        model.tap([first], leaf=True) as tap,  # the backward stops at the first layer's output
        torch.enable_grad(),
    ):
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        logits.gather(1, targets[:, None]).sum().backward(retain_graph=True)
        a_in, z1, c1 = (
            tap_in.activations[source],
            tap.activations[first].detach(),
            tap.gradients[first],
        )
        # zB at the first layer: R_z1 = z1 * c1, bounds = the sample's own input range
        flat = x.flatten(1)
        shape = (-1,) + (1,) * (a_in.dim() - 1)
        low = flat.min(dim=1).values.reshape(shape).expand_as(a_in)
        high = flat.max(dim=1).values.reshape(shape).expand_as(a_in)
        relevance = xplain.zbox_relevance(model.module(first), a_in.detach(), z1 * c1, low, high)
        if a_in is not xg:  # route relevance back through flatten/reshape to the pixels
            (relevance,) = torch.autograd.grad(a_in, xg, relevance)
    return xplain.Attribution(
        relevance.sum(dim=1),
        info={"relevance_sum": relevance.flatten(1).sum(1).tolist()},
        sample_info=[{"relevance_sum": v} for v in relevance.flatten(1).sum(1).tolist()],
    )


_EPS = xplain.Param(
    "epsilon", "float", 1e-6, "stabiliser ε added to denominators (sign-matched)", min=0.0
)
_COMMON = (
    "Rules are graph rules on the converted model (xplain.graph.lrp): rectifiers of every kind pass "
    "relevance unchanged; max-pooling is winner-take-all; average/global pooling, BatchNorm (its own "
    "elementwise rule, not folded) and adds use the ε-rule, so a residual add splits relevance in "
    "proportion to its inputs. Bias relevance is absorbed, so the map sums to the target logit "
    "only on bias-free networks (info.relevance_sum reports the sum). Signed map, channels summed."
)
_TRANSFORMER = (
    " Transformers and smooth activations (Ali et al., ICML 2022, 'XAI for Transformers: Better "
    "Explanations through Conservative Propagation'): the attention probabilities are held constant "
    "(A·V is linear in V, nothing flows into the softmax), LayerNorm's 1/σ is held constant (the "
    "layer becomes linear, then the ε-rule), and GELU, SiLU, Hardswish, ELU and tanh use the identity "
    "rule R_in = R_out — also when exported as x·gate(x) (x·σ(x), x·hardsigmoid(x), x·½(1+erf(x/√2))), "
    "where the gate is held constant. Squeeze-and-excitation gates are held constant (relevance "
    "stays with the gated signal), a division by a signal (a decomposed normalisation) holds the "
    "divisor constant, other products of two signals split relevance evenly (AttnLRP's uniform "
    "rule). With zero biases the map sums to the logit on ViTs too (tested). Models with a "
    "non-linearity that has no rule here (standalone sigmoid/hard-sigmoid/softplus activations, "
    "GroupNorm, InstanceNorm, LRN) are refused before running (exit 2, one line)."
)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="lrp-epsilon",
            reference="captum.attr.LRP(EpsilonRule)",
            summary="LRP with the ε-rule on every linear layer (Bach et al. 2015)",
            description=(
                "One forward and one backward pass. Every conv/linear layer redistributes relevance "
                "R_i = Σ_j a_i w_ij / (z_j + ε sign z_j) R_j, starting from the target logit. "
                + _COMMON
                + " With ε → 0 on ReLU networks this equals input × gradient."
                + _TRANSFORMER
            ),
            explain=_explain_epsilon,
            params=[_EPS],
            capabilities=xplain.Capabilities(
                needs_gradients=True,
                requires=("lrp-rules",),
                alternatives=("gradient", "integrated-gradients", "grad-cam"),
            ),
        )
    )
    register(
        xplain.Method(
            name="lrp-zplus",
            summary="LRP z⁺ / deep Taylor, zᴮ at the first layer (Montavon et al. 2017)",
            description=(
                "One forward and one backward pass. Conv/linear layers after the first use the z⁺-rule "
                "R_i = Σ_j a_i w⁺_ij / Σ_i a_i w⁺_ij R_j (deep Taylor for ReLU inputs); the first layer "
                "uses the zᴮ-rule with bounds l, h = the sample's own minimum and maximum input value "
                "(the preprocessed pixel range; a choice — the paper uses the data's bounds). "
                + _COMMON
                + " Rectifier networks only: the z⁺-rule assumes non-negative layer inputs (deep Taylor for "
                "ReLU), which GELU/SiLU/LayerNorm outputs are not; such models are refused before running "
                "(exit 2, one line) — use lrp-epsilon, which has the transformer rules."
            ),
            explain=_explain_zplus,
            params=[_EPS],
            capabilities=xplain.Capabilities(
                needs_gradients=True,
                requires=("rectifiers",),
                alternatives=("lrp-epsilon", "gradient", "integrated-gradients", "grad-cam"),
            ),
        )
    )

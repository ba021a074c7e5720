"""``lrp-epsilon``, ``lrp-zplus`` and ``lrp`` (zennit's composites): layer-wise relevance
propagation on the converted graph."""

import xplain


def _attribution(relevance):
    sums = relevance.flatten(1).sum(1).tolist()
    return xplain.Attribution(
        relevance.sum(dim=1),
        info={"relevance_sum": sums},
        sample_info=[{"relevance_sum": v} for v in sums],
    )


def _relevance(request: xplain.ExplainRequest, rules, first_rule=None):
    """x · c under the chooser ``rules(skip)``, the BatchNorms merged first (``batchnorm``);
    with ``first_rule(module, a_in, R_z1, x) -> R_in`` the first conv/linear layer is skipped by
    the chooser and its own rule maps the relevance at its output (tapped) to its input."""
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import dataclasses

    import torch

    if first_rule is not None and model.spec.fixed_batch and x.shape[0] > 1:
        # taps below must see each graph call's whole batch
        parts = [
            _relevance(
                dataclasses.replace(request, x=x[i : i + 1], targets=targets[i : i + 1]),
                rules,
                first_rule,
            )
            for i in range(x.shape[0])
        ]
        return torch.cat(parts)
    with xplain.merge_batchnorm(model, params["batchnorm"] == "merge"):
        if first_rule is None:
            with xplain.apply_rules(model, rules(())), torch.enable_grad():
                xg = x.detach().clone().requires_grad_(True)
                logits = model(xg)
                (c,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xg)
            return xg.detach() * c
        first = xplain.first_weight_layer(model)
        if first is None:
            raise xplain.UsageError("LRP with a first-layer rule needs a conv or linear layer")
        # the first layer's input (x, or x flattened/padded)
        source = model.node(first).args[0].name
        with (
            xplain.apply_rules(model, rules((first,))),
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
            relevance = first_rule(model.module(first), a_in.detach(), z1 * c1, x)
            if a_in is not xg:  # route relevance back through flatten/reshape to the pixels
                (relevance,) = torch.autograd.grad(a_in, xg, relevance)
        return relevance


def _zbox(eps):
    """The zᴮ-rule with bounds l, h = the sample's own minimum and maximum input value."""

    def rule(module, a_in, relevance, x):
        shape = (-1,) + (1,) * (a_in.dim() - 1)
        flat = x.flatten(1)
        low = flat.min(dim=1).values.reshape(shape).expand_as(a_in)
        high = flat.max(dim=1).values.reshape(shape).expand_as(a_in)
        return xplain.zbox_relevance(module, a_in, relevance, low, high, eps)

    return rule


def _explain_epsilon(request: xplain.ExplainRequest):
    eps = request.params["epsilon"]
    return _attribution(_relevance(request, lambda skip: xplain.lrp_rules("epsilon", eps, skip)))


def _explain_zplus(request: xplain.ExplainRequest):
    eps = request.params["epsilon"]
    if request.params["bias"] == "positive":  # zennit's ZPlus: b⁺ in the denominator, x⁻ with W⁻
        return _attribution(
            _relevance(
                request,
                lambda skip: xplain.lrp_layer_rules("zplus", "zplus", eps, eps, skip=skip),
                _zbox(eps),
            )
        )
    return _attribution(
        _relevance(request, lambda skip: xplain.lrp_rules("zplus", eps, skip), _zbox(1e-9))
    )


def _explain_composite(request: xplain.ExplainRequest):
    params = request.params
    conv, first = xplain.lrp_composites[params["composite"]]
    eps, stab, gamma = params["epsilon"], params["stabilizer"], params["gamma"]

    def rules(skip):
        return xplain.lrp_layer_rules(conv, "epsilon", eps, stab, gamma, skip=skip)

    first_rule = None
    if first == "zbox":
        first_rule = _zbox(stab)
    elif first == "flat":

        def first_rule(module, a_in, relevance, x):
            return xplain.flat_relevance(module, a_in, relevance, stab)

    return _attribution(_relevance(request, rules, first_rule))


_EPS = xplain.Param(
    "epsilon", "float", 1e-6, "stabiliser ε added to denominators (sign-matched)", min=0.0
)
_BATCHNORM = xplain.Param(
    "batchnorm",
    "str",
    "merge",
    "merge: fold each BatchNorm into the conv/linear layer before it (zennit's "
    "SequentialMergeBatchNorm); epsilon: the ε-rule on the BatchNorm itself",
    choices=("merge", "epsilon"),
)
_COMMON = (
    "Rules are graph rules on the converted model (xplain.graph.lrp): rectifiers of every kind pass "
    "relevance unchanged; max-pooling is winner-take-all; average/global pooling, BatchNorm (its own "
    "elementwise rule with batchnorm=epsilon; by default a BatchNorm after a conv/linear layer is folded into it "
    "first, as zennit's SequentialMergeBatchNorm canonizer does and as both ONNX exporters already "
    "do in eval mode, so both exports give the same map) and adds use the ε-rule, so a residual add splits relevance in "
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
            params=[_EPS, _BATCHNORM],
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
                "`bias`: the default z⁺ denominator Σ_i a_i w⁺_ij has no bias (Montavon et al.'s "
                "deep Taylor z⁺-rule; relevance is conserved layer by layer); bias=positive gives "
                "zennit's ZPlus instead, R_i = (x⁺_i w⁺_ij + x⁻_i w⁻_ij) / (Σ_i x⁺_i w⁺_ij + "
                "b⁺_j + Σ_i x⁻_i w⁻_ij) R_j, whose b⁺ absorbs relevance (zennit's number: "
                "docs/parity.md; zᴮ then uses ε as its stabiliser, as zennit's ZBox). "
                + _COMMON
                + " Rectifier networks only: the z⁺-rule assumes non-negative layer inputs (deep Taylor for "
                "ReLU), which GELU/SiLU/LayerNorm outputs are not; such models are refused before running "
                "(exit 2, one line) — use lrp-epsilon, which has the transformer rules."
            ),
            explain=_explain_zplus,
            params=[
                _EPS,
                xplain.Param(
                    "bias",
                    "str",
                    "none",
                    "none: deep-Taylor z⁺ without bias terms (conserves relevance); positive: "
                    "zennit's ZPlus (b⁺ in the denominator, negative inputs with W⁻)",
                    choices=("none", "positive"),
                ),
                _BATCHNORM,
            ],
            capabilities=xplain.Capabilities(
                needs_gradients=True,
                requires=("rectifiers",),
                alternatives=("lrp-epsilon", "gradient", "integrated-gradients", "grad-cam"),
            ),
        )
    )
    register(
        xplain.Method(
            name="lrp",
            summary="LRP with one of zennit's composites (EpsilonPlusFlat, EpsilonGammaBox, …)",
            description=(
                "One forward and one backward pass. zennit's layer-map composites on the converted "
                "graph (xplain.graph.lrp_composites), with zennit 0.5's rules term by term: "
                "convolutions get the composite's rule, fully connected layers the ε-rule "
                "(`epsilon`), adds and average pooling zennit's Norm (the ε-rule with "
                "`stabilizer`), activations pass relevance unchanged, BatchNorm is folded into the "
                "layer before it (`batchnorm`). `composite`: epsilon-plus (convs: z⁺ with b⁺ in "
                "the denominator, negative inputs with W⁻), epsilon-plus-flat (the same, the first "
                "layer flat: equal shares of each output's relevance to its receptive field), "
                "epsilon-gamma-box (convs: γ-rule with `gamma`, weights W + γW± paired with inputs "
                "of each sign, positive and negative outputs separately; first layer zᴮ with "
                "bounds = the sample's own minimum and maximum input value — pass the same bounds "
                "to zennit's ZBox to compare), epsilon-alpha2-beta1 (convs: αβ with α=2, β=1, the "
                "first layer included), epsilon-alpha2-beta1-flat. The residual add needs no "
                "canonizer: zennit's ResNetCanonizer makes it a Sum with the Norm rule, which is "
                "what the add gets here. zennit starts from the one-hot output; xplain from the "
                "target logit, so zennit's map × the logit is xplain's (docs/parity.md). "
                "Signed map, channels summed; info.relevance_sum is its sum. Rectifier networks "
                "(the rules assume ReLU-type activations between layers)."
            ),
            explain=_explain_composite,
            params=[
                xplain.Param(
                    "composite",
                    "str",
                    "epsilon-plus-flat",
                    "zennit's composite",
                    choices=(
                        "epsilon-plus",
                        "epsilon-plus-flat",
                        "epsilon-gamma-box",
                        "epsilon-alpha2-beta1",
                        "epsilon-alpha2-beta1-flat",
                    ),
                ),
                xplain.Param("epsilon", "float", 1e-6, "ε of the ε-rule (linear layers)", min=0.0),
                xplain.Param(
                    "stabilizer",
                    "float",
                    1e-6,
                    "stabiliser of the other rules (sign-matched, as zennit's)",
                    min=0.0,
                ),
                xplain.Param("gamma", "float", 0.25, "γ of epsilon-gamma-box", min=0.0),
                _BATCHNORM,
            ],
            capabilities=xplain.Capabilities(
                needs_gradients=True,
                requires=("rectifiers",),
                alternatives=("lrp-epsilon", "gradient", "integrated-gradients", "grad-cam"),
            ),
        )
    )

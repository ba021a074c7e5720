"""``guided-backprop`` and ``deconvnet``: modified backward passes through every rectifier."""

import xplain

_REDUCE = xplain.reduce_param()


def _make_explain(mode):
    def explain(request: xplain.ExplainRequest):
        model, x, targets, params = request.model, request.x, request.targets, request.params
        import torch

        with (
            xplain.apply_rules(model, xplain.rectifier_rules(mode)) as swapped,
            torch.enable_grad(),
        ):
            xg = x.detach().clone().requires_grad_(True)
            logits = model(xg)
            (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xg)
        maps = xplain.reduce_channels(grad, params["reduce"])
        return xplain.Attribution(maps, info={"rectifiers": len(swapped)})

    return explain


_RECTIFIERS = "ReLU, ReLU6, Clip, Hardtanh, LeakyReLU and PReLU"

#: shared with tr-gbp and mip-in: what happens on networks that are not rectifier networks
NON_RECTIFIER = (
    "Rectifier networks only: the rule is defined for rectifiers, and there is no documented "
    "guided rule for GELU, SiLU, Hardswish, ELU, sigmoid/tanh activations, LayerNorm or attention "
    "(the plain gradient through them would mix two methods silently). A model with any of them — "
    "ViT, Swin, ConvNeXt, EfficientNet, MobileNetV3 (SiLU/Hardswish, also when exported as "
    "x·sigmoid(x)) — is refused before running, exit 2, in one line that counts what it has and "
    "names methods to try. Allowed: sigmoid gates computed from another branch (squeeze-and-"
    "excitation, e.g. RegNetY); they keep their plain gradient."
)
_NON_RECTIFIER = NON_RECTIFIER
_CAPS = xplain.Capabilities(
    needs_gradients=True,
    requires=("rectifiers",),
    alternatives=("gradient", "integrated-gradients", "grad-cam", "lrp-epsilon"),
)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="guided-backprop",
            reference="captum.attr.GuidedBackprop",
            summary="guided backpropagation through every rectifier (Springenberg et al. 2015)",
            description=(
                "One forward and one backward pass of the target logit in which every rectifier "
                f"({_RECTIFIERS}) passes back only the positive part of the incoming gradient, masked by "
                "its own forward pass region: g_in = relu(g_out) * f'(x), where f'(x) is 1 where the "
                "rectifier passes its input (0 < x < 6 for ReLU6, lo < x < hi for Clip/Hardtanh) and the "
                "negative slope for LeakyReLU/PReLU. Signed map at input resolution, channels reduced by "
                "`reduce` (sum by default; Captum returns per-channel values, whose channel sum equals "
                "ours on ReLU networks). Deviation from Captum: Captum hooks only nn.ReLU and returns the "
                "plain gradient through ReLU6/Clip/LeakyReLU; xplain applies the rule to all of them. "
                "info.rectifiers says how many modules the rule changed. " + _NON_RECTIFIER
            ),
            explain=_make_explain("guided"),
            params=[_REDUCE],
            capabilities=_CAPS,
        )
    )
    register(
        xplain.Method(
            name="deconvnet",
            reference="captum.attr.Deconvolution",
            summary="deconvnet backward through every rectifier (Zeiler & Fergus 2014)",
            description=(
                "One forward and one backward pass of the target logit in which every rectifier "
                f"({_RECTIFIERS}) ignores its forward activation and rectifies the backward signal "
                "instead: g_in = relu(g_out) (LeakyReLU/PReLU: their own negative slope applied to "
                "g_out). Linear layers and pooling pass the gradient as usual (max-pooling through its "
                "switches). Signed map, channels reduced by `reduce` (sum by default). Deviation from "
                "Captum: Captum's Deconvolution hooks only nn.ReLU; xplain covers every rectifier kind. "
                + _NON_RECTIFIER
            ),
            explain=_make_explain("deconvnet"),
            params=[_REDUCE],
            capabilities=_CAPS,
        )
    )

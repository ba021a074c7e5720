"""``guided-grad-cam``: guided backpropagation weighted by the Grad-CAM map (Selvaraju et al.).

Adebayo et al. (2018) report it, with guided backprop, as the method that fails the cascading
randomisation check; the sanity-check bench needs it next to tr-gbp. Both factors come from the
built-in methods (one module each), so the product inherits their documented behaviour.
"""

import dataclasses

import xplain

from .cam import _explain_gradcam
from .guided import NON_RECTIFIER


def _explain(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import torch

    cam = _explain_gradcam(
        dataclasses.replace(
            request, params={"layer": params["layer"], "relu": True, "normalise": "none"}
        )
    )
    with (
        xplain.apply_rules(model, xplain.rectifier_rules("guided")) as swapped,
        torch.enable_grad(),
    ):
        xg = x.detach().clone().requires_grad_(True)
        logits = model(xg)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), xg)
    maps = xplain.reduce_channels(grad * cam.maps.to(grad)[:, None], params["reduce"])
    return xplain.Attribution(
        maps, info={"rectifiers": len(swapped), "layer": (cam.info or {}).get("layer")}
    )


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="guided-grad-cam",
            reference="captum.attr.GuidedGradCam",
            summary="guided backprop × Grad-CAM (Selvaraju et al. 2017)",
            description=(
                "The element-wise product of the guided-backprop gradient (per input channel, the "
                "`guided-backprop` rule through every rectifier) and the Grad-CAM map of the same "
                "target (`grad-cam` with relu, at `layer`, default the model's default feature "
                "layer), upsampled bilinearly to the input as in Selvaraju et al. 2017; channels "
                "are then reduced by `reduce` (sum by default). Two forward and two backward "
                "passes. Deviation from Captum: GuidedGradCam upsamples with nearest by default "
                "(interpolate_mode='nearest'); pass the bilinear mode there to compare. "
                + NON_RECTIFIER
            ),
            explain=_explain,
            params=[
                xplain.Param(
                    "layer", "str", "", "Grad-CAM feature layer (fx node name); empty = default"
                ),
                xplain.reduce_param(),
            ],
            capabilities=xplain.Capabilities(
                needs_gradients=True,
                requires=("rectifiers",),
                alternatives=("grad-cam", "integrated-gradients", "lrp-epsilon"),
            ),
        )
    )

"""``saliency``: the magnitude of the input gradient (Simonyan et al., 2014)."""

import xplain


def _explain(request: xplain.ExplainRequest):
    model, x, targets = request.model, request.x, request.targets
    import torch

    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), x)
    return grad.abs().amax(dim=1)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="saliency",
            reference="captum.attr.Saliency(abs=True)",
            summary="|d logit / d input|, max over channels (Simonyan et al. 2014)",
            description=(
                "One forward and one backward pass: the gradient of the target class's logit (never "
                "the softmax probability) with respect to the preprocessed input, in absolute value, "
                "reduced over colour channels by the maximum, as in Simonyan et al. and Captum's "
                "Saliency followed by a channel max. Non-negative. No parameters."
            ),
            explain=_explain,
            capabilities=xplain.Capabilities(needs_gradients=True),
        )
    )

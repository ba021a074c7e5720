"""An out-of-tree xplain plugin: the template for publishing your own methods and metrics.

It imports only ``xplain`` at import time; torch is imported inside the functions, so
``xplain methods`` stays fast however many plugins are installed.
"""

import xplain


def _center_prior(model, x, targets, params, seed):
    import torch

    height, width = x.shape[-2:]
    ys = torch.linspace(-1.0, 1.0, height, device=x.device)
    xs = torch.linspace(-1.0, 1.0, width, device=x.device)
    r2 = ys[:, None] ** 2 + xs[None, :] ** 2
    prior = torch.exp(-r2 / (2 * params["sigma"] ** 2))
    return prior.expand(x.shape[0], height, width).clone()


def _mean_map(model, x, targets, attribution, context):
    return {"map-mean": attribution.maps.flatten(1).mean(dim=1)}


@xplain.hookimpl
def register_methods(register):
    register(xplain.Method(
        name="example-center-prior",
        summary="a Gaussian centre prior (example plugin; ignores the model)",
        description="Returns exp(-r^2 / 2 sigma^2) over image coordinates scaled to [-1, 1]. "
                    "A control for the photographer's centre bias.",
        explain=_center_prior,
        params=[xplain.Param("sigma", "float", 0.5, "width of the Gaussian in half-image units", min=1e-3)],
        capabilities=xplain.Capabilities(needs_gradients=False),
    ))


@xplain.hookimpl
def register_metrics(register):
    register(xplain.Metric(
        name="example-map-mean",
        summary="mean attribution value (example plugin)",
        score=_mean_map,
        higher_is_better=True,
    ))

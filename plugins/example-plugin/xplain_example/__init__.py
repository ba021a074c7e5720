"""An out-of-tree xplain plugin: the template for publishing your own methods and metrics.

It imports only ``xplain`` at import time, so ``xplain methods`` stays fast however many plugins
are installed. The method's implementation is named lazily (``"xplain_example.impl:..."``): that
module imports torch at the top and carries type hints, and is imported the first time the
method runs. Both callables take one object (plugin contract v1, docs/plugin-contract.md).
"""

import xplain


def _mean_map(context: xplain.MetricContext):
    """A metric written inline: torch is not needed to average the maps."""
    return {"example-map-mean": context.attribution.maps.flatten(1).mean(dim=1)}


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="example-center-prior",
            summary="a Gaussian centre prior (example plugin; ignores the model)",
            description="Returns exp(-r^2 / 2 sigma^2) over image coordinates scaled to [-1, 1]. "
            "A control for the photographer's centre bias.",
            explain="xplain_example.impl:center_prior",
            params=[
                xplain.Param(
                    "sigma", "float", 0.5, "width of the Gaussian in half-image units", min=1e-3
                )
            ],
            capabilities=xplain.Capabilities(needs_gradients=False),
        )
    )


@xplain.hookimpl
def register_metrics(register):
    register(
        xplain.Metric(
            name="example-map-mean",
            summary="mean attribution value (example plugin)",
            score=_mean_map,
            higher_is_better=True,
        )
    )

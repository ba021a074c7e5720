"""``random``: a control attribution of uniform noise."""

import xplain


def _explain(request: xplain.ExplainRequest):
    x, seed = request.x, request.seed
    import torch

    height, width = x.shape[-2:]
    maps = [
        torch.rand((height, width), generator=gen, device=x.device, dtype=torch.float32)
        for gen in xplain.sample_generators(x, seed)
    ]
    return torch.stack(maps)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="random",
            summary="uniform noise in [0, 1): the control every method must beat",
            description=(
                "Ignores the model: each pixel gets an independent U[0, 1) value. The noise is drawn "
                "from a generator seeded by --seed and the image's own pixels, so the same image gets "
                "the same map whatever batch it is in, and another seed gives another map. Metrics "
                "should score real methods above it."
            ),
            explain=_explain,
            capabilities=xplain.Capabilities(needs_gradients=False, stochastic=True),
        )
    )

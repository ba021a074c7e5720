"""``deeplift`` and ``deeplift-shap``: DeepLIFT's rescale rule (Shrikumar et al. 2017).

The rules live in the core (:func:`xplain.deeplift_multipliers`, ``xplain/graph/deeplift.py``):
every rectifier kind the loader reports (and gate sigmoids) gets the rescale multiplier, every
max-pool Captum's max-pool rule, through ``Model.swap_modules`` (restored on exit). Here are the
baselines and the batching: ``deeplift`` explains each image against one baseline,
``deeplift-shap`` against every member of a reference set (Captum's DeepLiftShap: the mean of
the DeepLIFT maps over the set).
"""

import xplain

from . import references
from .gradients import baseline_params, integrated_gradients_baseline

_CAPS = xplain.Capabilities(
    needs_gradients=True,
    requires=("rectifiers",),
    alternatives=("integrated-gradients", "expected-gradients", "grad-cam", "lrp-epsilon"),
)

_RULES = (
    "Rules (Captum's DeepLift with multiply_by_inputs): a forward of the baseline records the input and output "
    "of every non-linearity, the input's forward pairs with it, and the backward of the target "
    "logit (never the softmax) replaces each non-linearity's local gradient by its multiplier. "
    "Rectifiers — ReLU, ReLU6, Clip, Hardtanh, LeakyReLU, PReLU, every kind the loader finds (Captum "
    "hooks only nn.ReLU/ELU/LeakyReLU/Sigmoid/Tanh/Softplus and silently keeps the plain gradient "
    "of a ReLU6) — and sigmoid gates (squeeze-excitation) use the rescale rule m = Δout/Δin, "
    "with the plain gradient where |Δin| < `eps` (Captum's 1e-10). Max-pooling (`maxpool`): "
    "gradient (the default) keeps its plain gradient, the default of the authors' own library "
    "(kundajelab/deeplift, MaxPoolDeepLiftMode.gradient) and what Captum returns wherever a ReLU "
    "feeds the pool (ResNet, VGG: Captum's pool rule and the ReLU's hook share one tensor and the "
    "ReLU's multiplier is built on the pool's plain gradient); rescale is Captum's max-pool rule "
    "(each output's change split at max(out, out') and routed to the input's and the baseline's "
    "maximum, divided by Δin) as it is meant to work: summed where overlapping windows (3×3/2) "
    "share a maximum (Captum's max_unpool keeps one) and with each sample's own gradient where "
    "|Δin| < eps (Captum 0.9 uses the first sample's, captum#1276); it makes the map sum exactly "
    "to f(x) − f(x'). Linear layers, BatchNorm, average pooling and adds keep "
    "their gradient; the product of a gate with its signal keeps its plain gradient, as in Captum. "
    "On networks of linear layers and rectifiers (and max-pools with maxpool=rescale) the map sums "
    "to f(x) − f(x') (summation-to-delta; sample_info.delta holds f(x) − f(x') per image). Models with non-rectifier "
    "activations (GELU, SiLU, Hardswish, LayerNorm, attention: no documented rescale rule for "
    "products and normalisations) are refused before running, exit 2, in one line. Cost: one "
    "forward of the baseline (no autograd) plus one forward and backward of the input."
)


def _rule_params():
    return [
        xplain.Param(
            "eps",
            "float",
            1e-10,
            "|Δin| below which a unit counts as unchanged (plain gradient)",
            min=0.0,
            max=1.0,
        ),
        xplain.Param(
            "maxpool",
            "str",
            "gradient",
            "max-pooling: its plain gradient (kundajelab/deeplift's default; what Captum returns "
            "when a ReLU feeds the pool) or the rescale rule (exact summation-to-delta)",
            choices=("rescale", "gradient"),
        ),
    ]


def _run(model, x, base, targets, params):
    """((x − x')·m, f(x) − f(x')) for paired rows of x and base (B×C×H×W)."""
    mult, delta, _ = xplain.deeplift_multipliers(
        model, x, base, targets, params["eps"], params["maxpool"]
    )
    return (x - base) * mult, delta


def _pairs_per_pass(model, params):
    # a pair runs two images' forwards (baseline, input) and keeps the baseline's records
    return max(
        1, xplain.images_per_pass(model, params["internal_batch"], params["memory_budget_mb"]) // 2
    )


def _explain_deeplift(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import torch

    base = integrated_gradients_baseline(x, params["baseline"], params["blur_sigma"], request.seed)
    per_pass = _pairs_per_pass(model, params)
    parts, deltas = [], []
    for lo in range(0, x.shape[0], per_pass):
        sl = slice(lo, lo + per_pass)
        attribution, delta = _run(model, x[sl], base[sl], targets[sl], params)
        parts.append(attribution)
        deltas.append(delta)
    total = torch.cat(parts)
    delta = torch.cat(deltas)
    return xplain.Attribution(
        xplain.reduce_channels(total, params["reduce"]),
        info={"baseline": params["baseline"]},
        sample_info=[
            {"delta": float(d), "attribution_sum": float(s)}
            for d, s in zip(delta, total.flatten(1).sum(dim=1))
        ],
    )


def _explain_deeplift_shap(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import torch

    refs, shared = references.reference_sets(
        x, params["baselines"], params["blur_sigma"], request.seed, "deeplift-shap"
    )
    per_pass = _pairs_per_pass(model, params)
    total = torch.zeros_like(x)
    pairs = [
        (b, j)
        for b in range(x.shape[0])
        for j in range(references.set_of(refs, shared, b).shape[0])
    ]
    counts = [0] * x.shape[0]
    for b, _ in pairs:
        counts[b] += 1
    for lo in range(0, len(pairs), per_pass):
        chunk = pairs[lo : lo + per_pass]
        idx = torch.tensor([b for b, _ in chunk], device=x.device)
        base = torch.stack([references.set_of(refs, shared, b)[j] for b, j in chunk])
        attribution, _ = _run(model, x[idx], base, targets[idx], params)
        total.index_add_(0, idx, attribution)
    total = total / torch.tensor(counts, device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    return xplain.Attribution(
        xplain.reduce_channels(total, params["reduce"]),
        info={
            "baselines": params["baselines"] if params["baselines"] in references.KINDS else "file",
            "reference_set_size": max(counts),
        },
    )


@xplain.hookimpl
def register_methods(register):
    passes = xplain.pass_params("images (baseline and input pairs, two images each)")
    register(
        xplain.Method(
            name="deeplift",
            reference="captum.attr.DeepLift",
            summary="DeepLIFT, rescale rule, against a baseline (Shrikumar et al. 2017)",
            description=(
                "DeepLIFT (Shrikumar, Greenside & Kundaje, ICML 2017) with the rescale rule: the "
                "contribution of each input unit to f(x) − f(x') for the target logit f and the "
                "baseline x', computed as (x − x') · m with m the multipliers propagated back "
                "through the network, then reduced over channels by `reduce` (sum by default). "
                "Equals Captum's DeepLift(model).attribute(x, baselines=x') summed over channels on "
                "ReLU networks. " + _RULES + " Baselines: zeros (Captum's default: 0 in the "
                "preprocessed space), blur (the image blurred by a Gaussian of `blur_sigma` "
                "pixels), uniform (noise between the image's min and max, drawn from its seed). "
                "sample_info: delta = f(x) − f(x'), attribution_sum = the map's total before the "
                "channel reduction."
            ),
            explain=_explain_deeplift,
            params=[
                *baseline_params(),
                *_rule_params(),
                xplain.reduce_param(),
                *passes,
            ],
            capabilities=_CAPS,
        )
    )
    register(
        xplain.Method(
            name="deeplift-shap",
            reference="captum.attr.DeepLiftShap",
            summary="DeepLIFT averaged over a reference set (DeepSHAP; Lundberg & Lee 2017)",
            description=(
                "DeepLIFT-SHAP (DeepSHAP, Lundberg & Lee, NeurIPS 2017): the mean over the reference "
                "set of the DeepLIFT maps (x − x'_j) · m_j, each against one reference x'_j — "
                "Captum's DeepLiftShap summed over channels (Captum requires more than one "
                "reference; xplain accepts one, and then equals deeplift). "
                + _RULES
                + " "
                + references.DESCRIPTION
                + " Cost: one DeepLIFT (two forwards, one backward) per image and reference; pairs "
                "of all images share each pass."
            ),
            explain=_explain_deeplift_shap,
            params=[*references.params(), *_rule_params(), xplain.reduce_param(), *passes],
            capabilities=_CAPS,
        )
    )

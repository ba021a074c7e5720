"""Captum's versions of our methods, for ``xplain bench``'s "ours / Captum" column.

Why a module of its own: the table of adapters (:data:`CAPTUM_ADAPTERS`, keyed by the
``Method.reference`` a plugin declares) grows with every method that has a Captum counterpart,
while the timing loop of :mod:`xplain.run.timing` does not. Each adapter translates our
method's validated parameters into Captum's call on the same converted graph, batch and
targets; which methods declare a reference is documented in bench/README.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..graph.model import Model
from ..plugins.maps import reduce_channels
from ..plugins.passes import images_per_forward_pass, images_per_pass
from ..plugins.plugin_api import Method
from ..plugins.registry import Registry, get_registry

#: a Captum run: ``fn(x, targets) -> B×H×W`` map comparable to ours
CaptumFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------- Captum counterparts
class _Net(nn.Module):
    """``model(x)`` as an ``nn.Module`` owning the converted graph, so Captum's module hooks
    (guided backprop, LRP, layer methods) see the graph's modules; a graph fixed at batch 1
    still runs sample by sample, as in :meth:`Model.__call__`."""

    def __init__(self, model: Model):
        super().__init__()
        self.graph = model.graph
        self._model = model

    def forward(self, x):
        return self._model(x)


def _param(params: dict, names: tuple[str, ...], default: Any) -> Any:
    """The first of ``names`` our method declares (plugins name things their own way), else ``default``."""
    for name in names:
        if name in params and params[name] is not None and params[name] != "":
            return params[name]
    return default


def _per_pass(
    model: Model, params: dict, key: str = "internal_batch", forward_only: bool = False
) -> int:
    """Images per pass our method uses (its explicit count, else its memory budget's, sized as
    :func:`images_per_forward_pass` for forward-only methods)."""
    size = images_per_forward_pass if forward_only else images_per_pass
    return size(model, int(params.get(key) or 0), float(params.get("memory_budget_mb") or 0.0))


@contextlib.contextmanager
def _saliency(ca, net, model, params, x) -> Iterator[CaptumFn]:
    sal = ca.Saliency(net)
    yield lambda x, t: sal.attribute(x, target=t, abs=True).amax(dim=1)


@contextlib.contextmanager
def _gradient(ca, net, model, params, x) -> Iterator[CaptumFn]:
    sal = ca.Saliency(net)
    yield lambda x, t: reduce_channels(
        sal.attribute(x, target=t, abs=False), params.get("reduce", "sum")
    )


@contextlib.contextmanager
def _input_x_gradient(ca, net, model, params, x) -> Iterator[CaptumFn]:
    ixg = ca.InputXGradient(net)
    yield lambda x, t: reduce_channels(ixg.attribute(x, target=t), params.get("reduce", "sum"))


@contextlib.contextmanager
def _integrated_gradients(ca, net, model, params, x) -> Iterator[CaptumFn]:
    ig = ca.IntegratedGradients(net)
    kwargs = {"n_steps": int(_param(params, ("steps", "n_steps"), 50))}
    rule = _param(params, ("method",), None)
    if rule is not None:
        kwargs["method"] = rule  # xplain uses Captum's quadrature names
    # both count images (interpolation points of all batch images) per pass: give Captum ours
    kwargs["internal_batch_size"] = _per_pass(model, params)
    # baseline zeros, our default; a blur/uniform baseline costs ours one blur or draw, Captum nothing
    yield lambda x, t: reduce_channels(
        ig.attribute(x, baselines=0.0, target=t, **kwargs), params.get("reduce", "sum")
    )


@contextlib.contextmanager
def _smoothgrad(ca, net, model, params, x) -> Iterator[CaptumFn]:
    nt = ca.NoiseTunnel(ca.Saliency(net))
    samples = int(_param(params, ("samples", "nt_samples"), 50))
    sigma = float(_param(params, ("noise", "sigma", "stdevs"), 0.15))
    nt_type = "smoothgrad_sq" if _param(params, ("square",), False) else "smoothgrad"
    # ours counts noisy images (of all batch images) per pass; Captum counts noise draws per image
    chunk = max(1, _per_pass(model, params) // x.shape[0])

    def run(x, t):
        stdev = sigma * float(x.max() - x.min())  # xplain: σ per image; Captum: one σ for the batch
        attr = nt.attribute(
            x,
            nt_type=nt_type,
            nt_samples=samples,
            stdevs=stdev,
            nt_samples_batch_size=chunk,
            target=t,
            abs=False,
        )
        return reduce_channels(attr, params.get("reduce", "sum"))

    yield run


def _modified_relu(cls_name):
    @contextlib.contextmanager
    def build(ca, net, model, params, x) -> Iterator[CaptumFn]:
        algo = getattr(ca, cls_name)(net)
        yield lambda x, t: reduce_channels(algo.attribute(x, target=t), params.get("reduce", "sum"))

    return build


@contextlib.contextmanager
def _grad_cam(ca, net, model, params, x) -> Iterator[CaptumFn]:
    name = _param(params, ("layer",), None)
    if name is None:
        default = model.default_feature_layer()
        if default is None:
            raise UsageError("the model has no spatial feature layer for Grad-CAM")
        name = default.name
    relu = bool(_param(params, ("relu",), True))
    node = model.node(name)
    height, width = model.spec.height, model.spec.width
    with contextlib.ExitStack() as stack:
        if node.op == "call_module":
            layer = model.module(name)
        else:  # a function node (add, flatten…): hook an identity inserted after it
            layer = nn.Identity()
            stack.enter_context(model.insert_after({name: layer}))
        cam = ca.LayerGradCam(net, layer)

        def run(x, t):
            a = cam.attribute(x, target=t, relu_attributions=relu)
            return ca.LayerAttribution.interpolate(a, (height, width), interpolate_mode="bilinear")[
                :, 0
            ]

        yield run


@contextlib.contextmanager
def _occlusion(ca, net, model, params, x) -> Iterator[CaptumFn]:
    c, h, w = model.spec.channels, model.spec.height, model.spec.width
    patch = int(_param(params, ("patch",), 0)) or max(1, min(h, w) // 8)  # 0 = auto, as the plugin
    stride = int(_param(params, ("stride",), 0)) or max(1, patch // 2)
    fill = float(_param(params, ("baseline",), 0.0))
    # ours counts occluded images (of all batch images) per pass; Captum counts windows per pass
    per_eval = max(1, _per_pass(model, params, "batch", forward_only=True) // x.shape[0])
    occ = ca.Occlusion(net)
    yield lambda x, t: occ.attribute(
        x,
        sliding_window_shapes=(c, patch, patch),
        strides=(c, stride, stride),
        baselines=fill,
        target=t,
        perturbations_per_eval=per_eval,
    )[:, 0]


def _grid_mask(model: Model, params: dict) -> torch.Tensor:
    """lime / kernel-shap's grid segments as Captum's feature mask (1×1×H×W, broadcast over the
    channels): squares of ``cell`` pixels (0: round(min(H, W)/14)), row-major ids."""
    if _param(params, ("segmentation",), "grid") != "grid":
        raise UsageError("the Captum column of lime/kernel-shap runs the grid segmentation only")
    height, width = model.spec.height, model.spec.width
    cell = int(_param(params, ("cell",), 0)) or max(1, round(min(height, width) / 14))
    rows = torch.arange(height, device=model.device) // cell
    cols = torch.arange(width, device=model.device) // cell
    return (rows[:, None] * -(-width // cell) + cols[None, :])[None, None]


def _surrogate(kind: str):
    """Captum's Lime (SkLearnLasso(alpha), cosine kernel of ``kernel_width``) or KernelShap
    with our segments as the feature mask, ``n_samples`` coalitions per image and our
    forward-only pass size as ``perturbations_per_eval``; Captum draws its own coalitions, so the
    maps are timed, not compared (the coalition-for-coalition parity is bench/perturbation_methods.py)."""

    @contextlib.contextmanager
    def build(ca, net, model, params, x) -> Iterator[CaptumFn]:
        if kind == "lime":
            from captum._utils.models.linear_model import SkLearnLasso
            from captum.attr._core.lime import get_exp_kernel_similarity_function

            width = float(_param(params, ("kernel_width",), 1.0))
            algo = ca.Lime(
                net,
                interpretable_model=SkLearnLasso(alpha=float(_param(params, ("alpha",), 0.01))),
                similarity_func=get_exp_kernel_similarity_function("cosine", width),
            )
        else:
            algo = ca.KernelShap(net)
        mask = _grid_mask(model, params)
        kwargs = {
            "n_samples": int(_param(params, ("n_samples",), 25)),
            "baselines": float(_param(params, ("baseline",), 0.0)),
            "perturbations_per_eval": _per_pass(model, params, forward_only=True),
        }
        yield lambda x, t: algo.attribute(x, target=t, feature_mask=mask, **kwargs)[:, 0]

    return build


@contextlib.contextmanager
def _lrp_epsilon(ca, net, model, params, x) -> Iterator[CaptumFn]:
    from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES
    from captum.attr._utils.lrp_rules import EpsilonRule

    eps = float(_param(params, ("epsilon",), 1e-9))
    modules = list(net.modules())
    before = {
        id(m): {a for a in ("rule", "activations", "activation") if a in vars(m)} for m in modules
    }
    lrp = ca.LRP(net)

    def run(x, t):
        for m in modules:  # Captum deletes the rules after each call: attach ours every time
            if type(m) in SUPPORTED_LAYERS_WITH_RULES:
                m.rule = EpsilonRule(epsilon=eps)
        return lrp.attribute(x, target=t).sum(dim=1)

    try:
        yield run
    finally:  # Captum leaves rules behind when it refuses a module type: leave the graph as found
        for m in modules:
            for attr in ("rule", "activations", "activation"):
                if attr in vars(m) and attr not in before[id(m)]:
                    delattr(m, attr)


@contextlib.contextmanager
def _relu6_rescaled() -> Iterator[None]:
    """Captum's DeepLift table with nn.ReLU6 added (its own ``nonlinear`` rule): Captum keeps a
    ReLU6's plain gradient otherwise, while ours rescales every rectifier kind."""
    import captum.attr._core.deep_lift as cdl

    had = nn.ReLU6 in cdl.SUPPORTED_NON_LINEAR
    cdl.SUPPORTED_NON_LINEAR.setdefault(nn.ReLU6, cdl.nonlinear)
    try:
        yield
    finally:
        if not had:
            del cdl.SUPPORTED_NON_LINEAR[nn.ReLU6]


@contextlib.contextmanager
def _deeplift(ca, net, model, params, x) -> Iterator[CaptumFn]:
    # a blur/uniform baseline is timed against a zero one (the same passes)
    dl = ca.DeepLift(net, eps=float(_param(params, ("eps",), 1e-10)))
    with _relu6_rescaled():
        yield lambda x, t: reduce_channels(
            dl.attribute(x, baselines=torch.zeros_like(x), target=t), params.get("reduce", "sum")
        )


@contextlib.contextmanager
def _gradient_shap(ca, net, model, params, x) -> Iterator[CaptumFn]:
    # stochastic: timed, not compared; a reference set other than zeros is timed as the batch
    gs = ca.GradientShap(net)
    zeros = _param(params, ("baselines",), "zeros") == "zeros"

    def run(x, t):
        refs = torch.zeros_like(x[:1]) if zeros else x.detach()
        return reduce_channels(
            gs.attribute(
                x,
                baselines=refs,
                n_samples=int(_param(params, ("n_samples",), 5)),
                stdevs=float(_param(params, ("stdevs",), 0.0)),
                target=t,
            ),
            params.get("reduce", "sum"),
        )

    yield run


@dataclasses.dataclass(frozen=True)
class CaptumCounterpart:
    """How Captum runs a method that declares ``Method(reference=...)``: ``description`` says
    how it is called, ``prepare`` is a context manager ``(captum.attr, net, model, params, x) ->
    fn(x, targets) -> B×H×W`` translating the method's parameters."""

    reference: str
    description: str
    prepare: Callable[..., contextlib.AbstractContextManager]


#: Captum reference implementations bench can run, by the ``Method.reference`` that names them
#: (which methods declare one is documented in bench/README.md); core names no method.
CAPTUM_ADAPTERS: dict[str, CaptumCounterpart] = {
    c.reference: c
    for c in (
        CaptumCounterpart(
            "captum.attr.Saliency(abs=True)", "Saliency(abs=True), channel max", _saliency
        ),
        CaptumCounterpart("captum.attr.Saliency(abs=False)", "Saliency(abs=False)", _gradient),
        CaptumCounterpart("captum.attr.InputXGradient", "InputXGradient", _input_x_gradient),
        CaptumCounterpart(
            "captum.attr.IntegratedGradients",
            "IntegratedGradients(n_steps, method, internal_batch_size)",
            _integrated_gradients,
        ),
        CaptumCounterpart(
            "captum.attr.NoiseTunnel(Saliency)",
            "NoiseTunnel(Saliency(abs=False)), smoothgrad",
            _smoothgrad,
        ),
        CaptumCounterpart(
            "captum.attr.GuidedBackprop", "GuidedBackprop", _modified_relu("GuidedBackprop")
        ),
        CaptumCounterpart(
            "captum.attr.Deconvolution", "Deconvolution", _modified_relu("Deconvolution")
        ),
        CaptumCounterpart(
            "captum.attr.LayerGradCam", "LayerGradCam(relu) + bilinear interpolate", _grad_cam
        ),
        CaptumCounterpart(
            "captum.attr.Occlusion", "Occlusion(patch, stride, perturbations_per_eval)", _occlusion
        ),
        CaptumCounterpart("captum.attr.LRP(EpsilonRule)", "LRP(EpsilonRule)", _lrp_epsilon),
        CaptumCounterpart("captum.attr.DeepLift", "DeepLift, ReLU6 in its rule table", _deeplift),
        CaptumCounterpart(
            "captum.attr.GradientShap", "GradientShap(n_samples, stdevs)", _gradient_shap
        ),
        CaptumCounterpart(
            "captum.attr.Lime",
            "Lime(SkLearnLasso(alpha), cosine kernel, n_samples, perturbations_per_eval), grid mask",
            _surrogate("lime"),
        ),
        CaptumCounterpart(
            "captum.attr.KernelShap",
            "KernelShap(n_samples, perturbations_per_eval), grid mask",
            _surrogate("kernel-shap"),
        ),
    )
}


def captum_counterpart(
    method: str | Method,
    model: Model,
    params: dict,
    x: torch.Tensor,
    registry: Registry | None = None,
) -> contextlib.AbstractContextManager[CaptumFn] | None:
    """A context manager yielding Captum's version of ``method`` (``fn(x, targets) -> B×H×W``, run
    in grad mode on a copy of ``x``, Captum's per-call warnings silenced) with ``params`` (our
    method's validated values) translated, or None when the method declares no reference
    implementation bench knows.

    Raises ImportError when Captum is not installed. Leaves the model as it found it on exit."""
    if isinstance(method, str):
        method = (registry or get_registry()).method(method)
    entry = CAPTUM_ADAPTERS.get(method.reference)
    if entry is None:
        return None
    import captum.attr as ca

    return _quietly(entry.prepare(ca, _Net(model), model, params, x))


@contextlib.contextmanager
def _quietly(ctx: contextlib.AbstractContextManager[CaptumFn]) -> Iterator[CaptumFn]:
    with ctx as fn:
        yield _quiet(fn)


def installed_captum_version() -> str | None:
    try:
        import captum

        return str(getattr(captum, "__version__", "?"))
    except Exception:  # noqa: BLE001 - any import failure means "not installed"
        return None


def _quiet(fn: CaptumFn) -> CaptumFn:
    """Captum's run, without its per-call warnings ("required_grads has been set…"), in grad mode."""
    import warnings

    def run(x, targets):
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")
            return fn(x.clone(), targets)

    return run

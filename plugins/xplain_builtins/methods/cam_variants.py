"""``grad-cam-plus-plus`` (Grad-CAM++) and ``score-cam``: pytorch-grad-cam's definitions at grad-cam's feature layer.

Both weight the channels A_k of the same feature layer ``grad-cam`` uses (its default, its
``layer`` parameter, token and channels-last layouts read through :class:`xplain.FeatureLayer`)
and return ReLU(Σ_k w_k A_k) upsampled like grad-cam — only the weights w_k differ. They are not
min-max normalised (pytorch-grad-cam's ``scale_cam_image``): rendering decides colours.

Score-CAM's masked forwards go through :meth:`xplain.Model.infer` (forward only, the run's
engine), as many masked images per pass as the memory budget allows, masks of all images of the
batch mixed in one pass.
"""

import xplain

from .cam import _gradcam_layer, _per_sample, layer_signal

_LAYER = xplain.Param(
    "layer", "str", "", "feature layer (fx node name); empty = grad-cam's default layer"
)
_RELU = xplain.Param(
    "relu", "bool", True, "apply ReLU to the weighted sum (pytorch-grad-cam always does)"
)

_SHARED = (
    "The layer is grad-cam's: `layer` (default: the model's default feature layer, e.g. the "
    "output of a ResNet's last block; on ViT/DeiT the tokens entering the last block after its "
    "first LayerNorm, pytorch-grad-cam's blocks[-1].norm1) may name any node with a spatial "
    "layout; B×H×W×C maps are permuted and B×N×C tokens lose their prefix tokens, as "
    "pytorch-grad-cam's reshape_transform does. The map is ReLU(Σ_k w_k A_k) (`relu`), upsampled "
    "bilinearly to the input size with align_corners=False like grad-cam; not min-max normalised "
    "(pytorch-grad-cam's scale_cam_image), since rendering decides colours. A graph fixed at "
    "batch 1 runs per sample. info: layer, layer_shape, layout."
)


def _finish(model, layer, acts, weights, relu):
    import torch.nn.functional as F

    cam = (weights[:, :, None, None] * acts).sum(dim=1, keepdim=True)
    if relu:
        cam = F.relu(cam)
    size = (model.spec.height, model.spec.width)
    return F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]


def _info(layer):
    return {
        "layer": layer.name,
        "layer_shape": list(layer.spatial_shape),
        "layout": layer.layout.kind if layer.layout else "nchw",
    }


# ----------------------------------------------------------------------------- grad-cam++
def gradcam_pp_weights(acts, grads, eps=1e-6):
    """Grad-CAM++'s channel weights (B×K) from activations and gradients (B×K×h×w): eq. 19 of
    Chattopadhay et al. with the exponential-output closed form of the higher derivatives, as
    pytorch-grad-cam computes it."""
    import torch

    g2 = grads * grads
    g3 = g2 * grads
    total = acts.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + total * g3 + eps)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (grads.clamp(min=0) * alpha).sum(dim=(2, 3))


def _explain_gradcam_pp(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    layer = _gradcam_layer(model, params["layer"])

    def run(x, targets):
        acts, grads = layer_signal(model, layer, x, targets, method="grad-cam-plus-plus")
        return _finish(model, layer, acts, gradcam_pp_weights(acts, grads), params["relu"]), {}

    maps, _ = _per_sample(model, x, targets, run)
    return xplain.Attribution(maps, info=_info(layer))


# ----------------------------------------------------------------------------- score-cam
def score_cam_masks(acts, size):
    """The masks Score-CAM multiplies the input with, for activations n×h×w: each upsampled
    bilinearly with align_corners=True (torch's UpsamplingBilinear2d) to ``size`` and min-max
    normalised, (m − min)/(max − min + 1e-8). n×H×W."""
    import torch.nn.functional as F

    up = F.interpolate(acts[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
    flat = up.flatten(1)
    low, high = flat.amin(dim=1), flat.amax(dim=1)
    return (up - low[:, None, None]) / (high - low + 1e-8)[:, None, None]


def _explain_score_cam(request: xplain.ExplainRequest):
    model, x, targets, params = request.model, request.x, request.targets, request.params
    import torch

    layer = _gradcam_layer(model, params["layer"])
    size = (model.spec.height, model.spec.width)
    per_pass = xplain.images_per_forward_pass(model, params["batch"], params["memory_budget_mb"])

    def run(x, targets):
        acts, _ = layer_signal(model, layer, x, targets, gradients=False, method="score-cam")
        b, k = acts.shape[:2]
        scores = acts.new_empty(b * k)
        flat = acts.reshape(b * k, *acts.shape[2:])
        owner = torch.arange(b, device=x.device).repeat_interleave(k)
        xd = x.detach()
        for lo in range(0, b * k, per_pass):
            sl = slice(lo, lo + per_pass)
            masks = score_cam_masks(flat[sl], size)
            who = owner[sl]
            logits = model.infer(xd[who] * masks[:, None])
            scores[sl] = logits.gather(1, targets[who][:, None])[:, 0].to(scores)
        weights = torch.softmax(scores.view(b, k), dim=1)
        return _finish(model, layer, acts, weights, params["relu"]), {}

    maps, _ = _per_sample(model, x, targets, run)
    info = _info(layer)
    info["forwards_per_image"] = int(layer.spatial_shape[0]) + 1
    return xplain.Attribution(maps, info=info)


@xplain.hookimpl
def register_methods(register):
    register(
        xplain.Method(
            name="grad-cam-plus-plus",
            reference="pytorch_grad_cam.GradCAMPlusPlus",
            summary="Grad-CAM++ at grad-cam's feature layer (Chattopadhay et al. 2018)",
            description=(
                "Grad-CAM++ (Chattopadhay, Sarkar, Howlader & Balasubramanian, WACV 2018) as "
                "pytorch-grad-cam defines it. One forward and one backward pass of the target "
                "logit (never the softmax) to the feature layer's output A (K channels) with "
                "gradient g: α_kij = g² / (2g² + (Σ_ab A_kab)·g³ + 1e-6), set to 0 where g = 0 "
                "(eq. 19 with the closed form for an exponential output), channel weights "
                "w_k = Σ_ij α_kij · ReLU(g_kij). " + _SHARED
            ),
            explain=_explain_gradcam_pp,
            params=[_LAYER, _RELU],
            capabilities=xplain.Capabilities(needs_gradients=True),
        )
    )
    register(
        xplain.Method(
            name="score-cam",
            reference="pytorch_grad_cam.ScoreCAM",
            summary="Score-CAM: channels weighted by the logit of the masked input (Wang et al. 2020)",
            description=(
                "Score-CAM (Wang et al., CVPR workshops 2020) as pytorch-grad-cam defines it: no "
                "gradients. Each of the K channels A_k of the feature layer is upsampled bilinearly "
                "to the input size with align_corners=True (torch's UpsamplingBilinear2d), min-max "
                "normalised to a mask M_k = (A_k − min)/(max − min + 1e-8), and the input times "
                "the mask (every colour channel) is run forward; the target logit of x ⊙ M_k is "
                "channel k's score s_k, and the weights are w = softmax_k(s) over the channels (the "
                "paper uses the softmax probability's increase over a baseline; pytorch-grad-cam "
                "the logits with a softmax over channels, which xplain follows). Cost: one forward "
                "to read A plus K masked forwards per image (K = 2048 on a ResNet-50, 1280 on "
                "EfficientNet-Lite0), through Model.infer, `batch` masked images per pass (0: as "
                "many as fit in `memory_budget_mb`), no backward. "
                + _SHARED
                + " info.forwards_per_image = K + 1."
            ),
            explain=_explain_score_cam,
            params=[
                _LAYER,
                _RELU,
                xplain.Param(
                    "batch",
                    "int",
                    0,
                    "masked images per forward pass; 0 = as many as fit in memory_budget_mb "
                    "(xplain.images_per_forward_pass). Never changes the map",
                    min=0,
                    max=4096,
                ),
                xplain.pass_params("", forward_only=True)[1],
            ],
            capabilities=xplain.Capabilities(needs_gradients=False),
        )
    )

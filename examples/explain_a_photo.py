"""Explain an image file from Python and keep what the CLI would write.

Run from the repository root: ``.venv/bin/python examples/explain_a_photo.py [OUT]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import xplain

out = Path(sys.argv[1] if len(sys.argv) > 1 else "xplain-out")
out.mkdir(parents=True, exist_ok=True)
model = xplain.load_model("sample_models/digits_cnn.onnx")  # verified against onnxruntime
photo = "sample_models/images/digit_3.png"
x, geometry = model.preprocess(xplain.load_image(photo))  # the CLI's preprocessing, by hand
print("model input", tuple(x.shape), "from", geometry.original_size)
result = xplain.explain(model, photo, method="saliency")  # a path, a PIL image or a tensor
target = int(result.targets[0])
print(f"class {target} ({model.label(target)}) p={result.probabilities[0]:.3f}")
result.overlay().save(out / "overlay.png")  # a PIL image, e.g. to show in a notebook
records = result.save(out, panel=True)  # heatmap, overlay, .npy, JSON record, panel
print("wrote", ", ".join(sorted(records[0]["files"])))

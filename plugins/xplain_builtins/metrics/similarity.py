"""Similarity measures of the sanity checks (Adebayo et al. 2018, section 3 and appendix).

The paper compares the original map with the map of each randomised model by Spearman rank
correlation (of |map| and of the signed map), SSIM and the Pearson correlation of the two maps'
histograms of oriented gradients; each is a function ``(ref, maps) -> B`` of two B×H×W batches.
Kept apart from ``properties.py`` so the cascading loop stays readable and each measure has
one place that says how it is computed.
"""

import xplain

#: measure name -> (needs |map|: True, signed: False, follow the metric's `absolute`: None)
MEASURES = {
    "ssim": None,
    "spearman": None,
    "spearman-abs": True,
    "spearman-signed": False,
    "hog": None,
}


def parse_measures(text):
    """The comma-separated `similarity` parameter as a list of known names (UsageError if not)."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    unknown = [n for n in names if n not in MEASURES]
    if unknown or not names:
        raise xplain.UsageError(
            f"sanity: unknown similarity {', '.join(unknown) or '(empty)'}",
            hint=f"choose from {', '.join(MEASURES)} (comma-separated)",
        )
    return list(dict.fromkeys(names))


def hog_similarity(a, b):
    """Pearson correlation of the HOG descriptors of two B×H×W map batches (maps min-max scaled).

    scikit-image's ``hog`` with its defaults (9 orientations, 8×8-pixel cells, 3×3-cell blocks,
    L2-Hys) where the map is large enough; smaller maps use cells of a quarter of their side, so
    that a 16×16 test map still has 2×2 blocks of 2×2 cells. Adebayo et al. compute HOG with
    skimage and correlate the features; they do not give the cell size."""
    import torch

    try:
        from skimage.feature import hog
    except ImportError:  # an optional dependency (the `segments` extra)
        raise xplain.UsageError(
            "sanity similarity=hog needs scikit-image", hint="pip install scikit-image"
        ) from None
    import numpy as np

    out = []
    for x, y in zip(a.detach().cpu().double().numpy(), b.detach().cpu().double().numpy()):
        side = min(x.shape)
        cell = 8 if side >= 24 else max(1, side // 4)
        block = 3 if side >= 24 else 2
        feats = []
        for m in (x, y):
            lo, hi = float(m.min()), float(m.max())
            m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
            feats.append(
                hog(
                    m,
                    pixels_per_cell=(cell, cell),
                    cells_per_block=(block, block),
                    feature_vector=True,
                )
            )
        u, v = feats[0] - feats[0].mean(), feats[1] - feats[1].mean()
        d = float(np.linalg.norm(u) * np.linalg.norm(v))
        out.append(float(u @ v) / d if d > 0 else 0.0)
    return torch.tensor(out, dtype=torch.float32, device=a.device)


def layer_blocks(model, layers, depth):
    """Consecutive weight layers grouped into blocks by the first ``depth`` '/'-separated parts
    of their ONNX node names (torch.onnx names nodes by module path: '/net/_blocks.3/_conv/Conv'
    with depth 2 is block '/net/_blocks.3'); depth 0 keeps one layer per step. Returns a list of
    (block name, [fx names])."""
    blocks = []
    for name in layers:
        onnx = model.onnx_name(name) or name
        key = "/".join(onnx.split("/")[: depth + 1]) if depth > 0 and "/" in onnx else onnx
        if depth > 0 and blocks and blocks[-1][0] == key:
            blocks[-1][1].append(name)
        else:
            blocks.append((key, [name]))
    return blocks

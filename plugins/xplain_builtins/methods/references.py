"""Reference sets: the baselines ``expected-gradients`` and ``deeplift-shap`` draw from.

Captum's GradientShap and DeepLiftShap take a *distribution* of baselines (a tensor of N
reference inputs). On the command line that is ``--param baselines=VALUE``:

* ``zeros``: one all-zero input (zero in the model's preprocessed space; Captum's usual choice);
* ``blur``: each image's own Gaussian blur (``blur_sigma``), a set of one per image;
* ``uniform``: each image's own uniform noise in [min x_b, max x_b], drawn from its generator;
* ``batch``: the images of the batch itself (Captum's common ``baselines=inputs``). The map of an
  image then depends on the rest of its batch, and a batch of one image is its own reference
  (an all-zero map): use it for data sets, not single images;
* a path to a ``.npy`` file: N×C×H×W (or C×H×W) float reference inputs, already preprocessed
  for the model (Erion et al.'s training-set sample). Read with ``allow_pickle=False``; a file
  that is missing, not regular, too large, not numeric, non-finite or of the wrong shape is one
  line naming it (exit 5).

torch is imported inside functions (plugins stay torch-free at import time).
"""

import os
import stat

import xplain

#: what ``baselines`` accepts besides a file
KINDS = ("zeros", "blur", "uniform", "batch")
#: the largest reference file read (bytes)
MAX_FILE_BYTES = 1 << 31

DESCRIPTION = (
    "`baselines` is the reference set: zeros (one all-zero input in the preprocessed space), blur "
    "(each image's Gaussian blur, `blur_sigma` pixels), uniform (each image's uniform noise "
    "between its min and max, drawn from its seed), batch (the images of the batch: a map then "
    "depends on its batch, and a lone image is its own reference, an all-zero map) or a path to "
    "a .npy file of N×C×H×W preprocessed reference inputs (read without pickle; a bad file is "
    "one line naming it, exit 5)."
)


def params(default: str = "zeros") -> list:
    return [
        xplain.Param(
            "baselines",
            "str",
            default,
            "reference set: zeros, blur, uniform, batch, or a .npy file of N×C×H×W inputs",
        ),
        xplain.Param(
            "blur_sigma", "float", 5.0, "Gaussian σ in pixels for baselines=blur", min=0.0, max=100
        ),
    ]


def _load_file(path: str, x, method: str):
    """The N×C×H×W reference inputs stored in ``path`` (a ``.npy`` file), on x's device/dtype."""
    import numpy as np
    import torch

    def bad(message):
        return xplain.InputDataError(message, path=path, hint=f"see `xplain methods show {method}`")

    try:
        st = os.stat(path)
    except (OSError, ValueError):
        raise bad(f"baselines must be one of {', '.join(KINDS)} or an existing .npy file") from None
    if not stat.S_ISREG(st.st_mode):
        raise bad("baselines file is not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise bad(f"baselines file is larger than {MAX_FILE_BYTES >> 20} MB")
    try:
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise bad("baselines file is not a .npy array (no NumPy header)")
            fh.seek(0)
            array = np.load(fh, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise bad(
            "baselines file is not a .npy array of numbers (damaged, or pickled Python objects, "
            "which are never loaded)"
        ) from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise bad("baselines file does not hold a numeric array")
    want = tuple(x.shape[1:])
    if array.ndim == len(want):
        array = array[None]
    if array.ndim != len(want) + 1 or tuple(array.shape[1:]) != want or array.shape[0] < 1:
        raise bad(
            f"baselines file holds an array of shape {'×'.join(map(str, array.shape))}; "
            f"the model needs N×{'×'.join(map(str, want))}"
        )
    refs = torch.from_numpy(np.ascontiguousarray(array)).to(device=x.device, dtype=x.dtype)
    if not torch.isfinite(refs).all():
        raise bad("baselines file holds NaN or infinite values")
    return refs


def reference_sets(x, kind: str, blur_sigma: float, seed: int, method: str):
    """``(refs, shared)``: ``shared`` True → one N×C×H×W set for every image; False → a B×C×H×W
    tensor, image b's set being ``refs[b:b+1]``."""
    from .gradients import integrated_gradients_baseline

    if kind == "zeros":
        return x.new_zeros((1, *x.shape[1:])), True
    if kind in ("blur", "uniform"):
        return integrated_gradients_baseline(x.detach(), kind, blur_sigma, seed), False
    if kind == "batch":
        return x.detach(), True
    return _load_file(kind, x, method), True


def set_of(refs, shared: bool, b: int):
    """Image b's reference set (N×C×H×W)."""
    return refs if shared else refs[b : b + 1]

"""Reading the state ``xplain fit`` saved for a model: where it lives and how it is checked.

A :class:`~xplain.graph.model.Model` looks up its fitted state itself (``model.fitted_state``),
so the reading side sits with the model, below the run stage that writes it
(:mod:`xplain.run.state`). State lives in ``<state dir>/<model digest[:16]>/<method>.safetensors``
with a JSON metadata file beside it; the state dir is ``--state-dir``, ``$XPLAIN_STATE_DIR`` or
``~/.cache/xplain/state``. The model digest in the metadata must match when loading.

The two files are one unit: the metadata holds the sha256 of the tensor file, written after it.
A fit killed between the two renames leaves new tensors beside old metadata; the digest no longer
matches and loading refuses instead of silently mixing two fits.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputDataError
from ..untrusted import parse_json, printable, require_regular_file

if TYPE_CHECKING:
    from .model import Model

#: the largest state file read (a fitted state is statistics or inverse networks, not a model zoo)
MAX_STATE_BYTES = 4 * 2**30
MAX_META_BYTES = 64 * 2**20


class StateDict(dict):
    """A state's tensors or metadata: a key a method expects but the file lacks is an
    :class:`InputDataError` naming the file (not ``KeyError: 'std'`` from inside a method)."""

    def __init__(self, data: dict, path: Path, what: str):
        super().__init__(data)
        self.path, self.what = path, what

    def __missing__(self, key):
        raise InputDataError(
            f"fitted state has no {self.what} {key!r} (damaged, or fitted by another version)",
            path=self.path,
            hint="refit with `xplain fit`",
        )


def state_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        from ..errors import UsageError
        from ..untrusted import check_path_length

        check_path_length(override, UsageError, "--state-dir")
        return Path(override)
    if os.environ.get("XPLAIN_STATE_DIR"):
        return Path(os.environ["XPLAIN_STATE_DIR"])
    return Path.home() / ".cache" / "xplain" / "state"


def state_paths(digest: str, method: str, root=None) -> tuple[Path, Path]:
    folder = state_dir(root) / digest[:16]
    return folder / f"{method}.safetensors", folder / f"{method}.json"


def _check_folder(folder: Path, error) -> None:
    """The ``<digest>`` folder must be a real folder inside the state root: a symbolic link there
    (to another model's folder, to ``/etc``) would make ``fit`` write, and ``explain`` read,
    somewhere else. The root itself may be a link (a cache on another disk)."""
    if folder.is_symlink():
        try:
            target = printable(os.readlink(folder))
        except OSError:
            target = "?"
        raise error(
            f"the fitted-state folder is a symbolic link (to {target}); refused: state is "
            "written and read only inside the state root",
            path=folder,
        )
    if folder.exists() and not folder.is_dir():
        raise error("the fitted-state folder is not a folder", path=folder)


def check_state_folder(digest: str, method: str, root=None) -> None:
    """Before a fit starts: refuse a ``<digest>`` folder that is a symbolic link (exit 5)."""
    _check_folder(state_paths(digest, method, root)[0].parent, InputDataError)


#: state tensors that hold per-feature statistics of ``meta["layer"]``: their shape must be the
#: layer's per-sample shape (IBA and InputIBA write them)
LAYER_TENSORS = ("mean", "std", "active_fraction")


def check_state_matches(model, tensors: dict, meta: dict, meta_path: Path) -> None:
    """Fitted state must describe *this* model: a ``layer`` it names must exist in the graph, a
    ``layer_shape`` must be that layer's shape, and the per-feature statistics must have it.
    Metadata edited to name another layer (its checksum resealed) is refused here (exit 5), not
    broadcast into a wrong map or a RuntimeError deep inside a method."""
    from ..errors import XplainError

    layer = meta.get("layer")
    if layer is None:
        return
    if not isinstance(layer, str) or not layer or len(layer) > 1000:
        raise InputDataError("fitted state metadata has a malformed 'layer'", path=meta_path)
    try:
        node = model.node(layer)
        shape = [int(d) for d in model.shape(node.name)[1:]]
    except (XplainError, KeyError, TypeError, ValueError):
        raise InputDataError(
            f"fitted state is for layer {printable(repr(layer[:80]))}, which this model does not "
            "have",
            path=meta_path,
            hint="refit with `xplain fit`",
        ) from None
    declared = meta.get("layer_shape")
    if declared is not None and declared != shape:
        raise InputDataError(
            f"fitted state is for layer {printable(repr(layer))} of shape "
            f"{printable(str(declared)[:80])}, but the model's layer has shape {shape}",
            path=meta_path,
            hint="refit with `xplain fit`",
        )
    for name in LAYER_TENSORS:
        t = tensors.get(name) if isinstance(tensors, dict) else None
        if t is not None and list(t.shape) != shape:
            raise InputDataError(
                f"fitted state tensor {name!r} has shape {list(t.shape)}, but layer "
                f"{printable(repr(layer))} has shape {shape}",
                path=meta_path,
                hint="refit with `xplain fit`",
            )


def load_state(digest: str, method: str, root=None, device="cpu") -> tuple[dict, dict] | None:
    """The saved ``(tensors, meta)`` for this model and method, or None if never fitted."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    tensor_path, meta_path = state_paths(digest, method, root)
    _check_folder(tensor_path.parent, InputDataError)
    if not (tensor_path.exists() or tensor_path.is_symlink()) or not (
        meta_path.exists() or meta_path.is_symlink()
    ):
        return None
    # FIFOs and devices (/dev/zero) are refused before opening: one would block, the other never end
    meta_size = require_regular_file(meta_path, InputDataError, "fitted state metadata")
    size = require_regular_file(tensor_path, InputDataError, "fitted state")
    if size > MAX_STATE_BYTES or meta_size > MAX_META_BYTES:
        raise InputDataError("fitted state is larger than the 4 GiB limit", path=tensor_path)
    try:
        meta = parse_json(
            meta_path.read_bytes(), meta_path, InputDataError, "fitted state metadata"
        )
    except OSError as err:
        raise InputDataError(
            f"fitted state is unreadable: {err.strerror}", path=meta_path
        ) from None
    except InputDataError as err:
        raise InputDataError(f"fitted state is unreadable: {err.message}", path=meta_path) from None
    if not isinstance(meta, dict):
        raise InputDataError("fitted state metadata is not a JSON object", path=meta_path)
    if meta.get("model_digest") != digest:
        raise InputDataError("fitted state belongs to another model", path=meta_path)
    try:
        payload = tensor_path.read_bytes()
        tensors = load(payload)
    except (OSError, ValueError, SafetensorError) as err:
        raise InputDataError(f"fitted state is unreadable: {err}", path=tensor_path) from None
    if meta.get("tensors_sha256") != hashlib.sha256(payload).hexdigest():
        raise InputDataError(
            "fitted state tensors and metadata do not belong together (a fit interrupted "
            f"between writing {tensor_path.name} and {meta_path.name}?)",
            path=tensor_path,
            hint="refit with `xplain fit`",
        )
    return (
        StateDict({k: v.to(device) for k, v in tensors.items()}, tensor_path, "tensor"),
        StateDict(meta, meta_path, "metadata key"),
    )


def lookup_state(model: Model, method: str) -> tuple[dict, dict]:
    """``model.fitted_state(method)``: a preloaded copy (Ray workers), else the disk; nothing
    inside ``model.without_fitted_state()``; an error naming the fit command when there is none."""
    if model.fitted_state_hidden:  # neither the disk nor a preloaded copy
        found = None
    elif model.preloaded_state and method in model.preloaded_state:
        tensors, meta = model.preloaded_state[method]
        found = {k: v.to(model.device) for k, v in tensors.items()}, dict(meta)
    else:
        found = load_state(model.digest, method, root=model.state_dir, device=model.device)
    if found is None:
        raise InputDataError(
            f"no fitted state for method {method!r} and this model",
            path=model.report.path,
            hint=f"run `xplain fit {method} {model.report.path} DATA` first",
        )
    check_state_matches(  # layer and shape match (exit 5)
        model, *found, state_paths(model.digest, method, model.state_dir)[1]
    )
    return found

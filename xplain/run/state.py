"""Fitted state of methods that learn from data, saved with safetensors (never pickle).

State lives in ``<state dir>/<model digest[:16]>/<method>.safetensors`` with a JSON
metadata file beside it; the state dir is ``--state-dir``, ``$XPLAIN_STATE_DIR`` or
``~/.cache/xplain/state``. The model digest in the metadata must match when loading.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import InputDataError
from ..output.fileio import atomic_write


def state_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override)
    if os.environ.get("XPLAIN_STATE_DIR"):
        return Path(os.environ["XPLAIN_STATE_DIR"])
    return Path.home() / ".cache" / "xplain" / "state"


def state_paths(digest: str, method: str, root=None) -> tuple[Path, Path]:
    folder = state_dir(root) / digest[:16]
    return folder / f"{method}.safetensors", folder / f"{method}.json"


def save_state(digest: str, method: str, tensors: dict, meta: dict, root=None) -> Path:
    """Write tensors (safetensors) and metadata (JSON), each atomically."""
    from safetensors.torch import save

    tensor_path, meta_path = state_paths(digest, method, root)
    payload = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    atomic_write(tensor_path, payload)
    record = {"model_digest": digest, "method": method, **meta}
    atomic_write(meta_path, json.dumps(record, indent=2).encode())
    return tensor_path


def load_state(digest: str, method: str, root=None, device="cpu") -> tuple[dict, dict] | None:
    """The saved ``(tensors, meta)`` for this model and method, or None if never fitted."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    tensor_path, meta_path = state_paths(digest, method, root)
    if not tensor_path.exists() or not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        tensors = load(tensor_path.read_bytes())
    except (OSError, ValueError, SafetensorError) as err:
        raise InputDataError(f"fitted state is unreadable: {err}", path=tensor_path) from None
    if not isinstance(meta, dict):
        raise InputDataError("fitted state metadata is not a JSON object", path=meta_path)
    if meta.get("model_digest") != digest:
        raise InputDataError("fitted state belongs to another model", path=meta_path)
    return {k: v.to(device) for k, v in tensors.items()}, meta

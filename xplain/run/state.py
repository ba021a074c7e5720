"""Saving the fitted state of methods that learn from data, with safetensors (never pickle).

The write side of ``xplain fit``; where state lives, and reading it back with its checks, is
:mod:`xplain.graph.fitted` (the model looks its state up itself), re-exported here.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import InputDataError
from ..fileio import atomic_write, write_json
from ..graph.fitted import (
    MAX_META_BYTES,
    MAX_STATE_BYTES,
    StateDict,
    _check_folder,
    check_state_folder,
    check_state_matches,
    load_state,
    state_dir,
    state_paths,
)

__all__ = [
    "MAX_META_BYTES",
    "MAX_STATE_BYTES",
    "StateDict",
    "check_state_folder",
    "check_state_matches",
    "load_state",
    "save_state",
    "state_dir",
    "state_paths",
]


def save_state(digest: str, method: str, tensors: dict, meta: dict, root=None) -> Path:
    """Write tensors (safetensors) and metadata (JSON), each atomically."""
    from safetensors.torch import save

    tensor_path, meta_path = state_paths(digest, method, root)
    _check_folder(tensor_path.parent, InputDataError)
    payload = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    record = {
        "model_digest": digest,
        "method": method,
        **meta,
        "tensors_sha256": hashlib.sha256(payload).hexdigest(),
    }
    atomic_write(tensor_path, payload)
    write_json(meta_path, record)
    return tensor_path

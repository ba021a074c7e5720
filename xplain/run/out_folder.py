"""Output folders never mix models: a second model's run into the same ``--out`` gets a folder
of its own instead of replacing the first model's files (issue 29.4).

Why a module of its own: ``explain``'s file names (``NAME.METHOD.TARGET.*``) do not name the
model, so explaining the same photo with two models into one folder silently replaced the
first model's pictures.  The JSON records say which model wrote them (its digest); when the
folder already holds records of another model, this run writes into ``OUT/MODEL-STEM/`` (or
``OUT/MODEL-STEM-DIGEST8/`` if that, too, belongs to another model) and warns once, naming it.
The same model writing again replaces its own files, as before.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..untrusted import safe_stem

__all__ = ["folder_for"]

MAX_RECORDS = 2000  #: records read to find the folder's models (a huge folder: the first ones)
MAX_BYTES = 1 << 20  #: a record larger than this is not one of ours


def _digests(folder: Path) -> set[str]:
    """The model digests named by the JSON records directly in ``folder`` (unreadable or
    foreign JSON files are ignored: the folder is the user's)."""
    found: set[str] = set()
    if not folder.is_dir():
        return found
    for k, path in enumerate(folder.glob("*.json")):
        if k >= MAX_RECORDS:
            break
        try:
            if not path.is_file() or path.stat().st_size > MAX_BYTES:
                continue
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, dict) and isinstance(model.get("digest"), str):
            found.add(model["digest"])
    return found


def folder_for(out_dir: Path, digest: str, model_path: str | Path) -> Path:
    """Where a run of the model with ``digest`` writes: ``out_dir`` unless it holds another
    model's records (then a sub-folder named after the model, see the module docstring)."""
    out_dir = Path(out_dir)
    others = _digests(out_dir) - {digest}
    if not others:
        return out_dir
    stem = safe_stem(Path(str(model_path)).stem) or "model"
    for name in (stem, f"{stem}-{digest[:8]}"):
        candidate = out_dir / name
        if not (_digests(candidate) - {digest}):
            warnings.warn(
                f"{out_dir} holds another model's outputs; this model's go to {candidate}",
                stacklevel=2,
            )
            return candidate
    return out_dir / f"{stem}-{digest[:16]}"

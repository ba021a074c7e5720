"""``xplain fit``: stream a data set through a method's ``fit`` and save the state.

The contract with a method is ``fit(model, batches, params, console) -> (tensors, meta)``:

* ``batches()`` starts a fresh stream of preprocessed float32 batches ``x`` (B×C×H×W, on the
  model's device) — call it once per epoch. ``batches(labels=True)`` streams ``(x, labels)``
  instead, ``labels`` a long tensor with ``-1`` where the data set gives no label. Methods that
  ignore labels (IBA statistics) keep calling ``batches()``; nothing has to be declared.
* ``console`` is a :class:`FitConsole`: ``console.print(...)`` like a rich console, and
  ``console.task(description, total)`` for a progress bar (``.advance(n)``, ``.update(text)``,
  ``.close()``). It may be None when a method is fitted from Python.
* DATA is read by :func:`xplain.data.datasets.read_dataset` (class sub-folders, a CSV manifest, or a
  plain folder; ``--labels`` a CSV/TXT of image labels); rows the reader marks bad are skipped.
* ``--classes``, ``--samples`` and ``--layer`` act on the data (only the listed classes, at
  most N images per class, or in total when the data has no labels); a method that declares a
  ``classes`` or ``layer`` parameter also receives them as parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from ..data.images import Preprocess
from ..errors import InputDataError, PluginError, UsageError, XplainError
from ..graph.model import Model
from ..plugins.plugin_api import Method
from ..plugins.registry import validate_params
from .api import check_requirements
from .batching import iter_batches as load_batches
from .state import check_state_folder, save_state


def iter_batches(
    model: Model,
    paths: list[Path],
    preprocess: Preprocess,
    batch_size: int,
    labels: list[int] | None = None,
) -> Iterator:
    """Preprocessed batches of ``paths``; ``(x, labels)`` pairs when ``labels`` is given."""
    for batch in load_batches(paths, preprocess, batch_size, model.device):
        start = batch.start
        if labels is None:
            yield batch.x
        else:
            yield (
                batch.x,
                torch.tensor(
                    labels[start : start + batch_size], dtype=torch.long, device=model.device
                ),
            )


class _Task:
    def __init__(self, progress, task_id):
        self._progress, self._id = progress, task_id

    def advance(self, n: float = 1) -> None:
        self._progress.advance(self._id, n)

    def update(self, description: str) -> None:
        self._progress.update(self._id, description=description)

    def close(self) -> None:
        self._progress.stop()


class FitConsole:
    """A rich console that also hands out progress bars (``task``) to a method's ``fit``."""

    def __init__(self, console=None):
        self.console = console

    def __getattr__(self, name):  # print, log, … of the wrapped console; no-ops without one
        if name.startswith("__") or name == "console":
            raise AttributeError(name)
        if self.console is None:
            return lambda *args, **kwargs: None
        return getattr(self.console, name)

    def task(self, description: str, total: float | None = None) -> _Task:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
            disable=self.console is None or not getattr(self.console, "is_terminal", False),
        )
        task_id = progress.add_task(description, total=total)
        progress.start()
        return _Task(progress, task_id)


def _resolve_classes(text: str, class_names: list[str] | None, num_classes: int) -> list[int]:
    from ..data.datasets import resolve_label

    out = []
    for item in text.split(","):
        if not item.strip():
            continue
        try:
            idx = resolve_label(item, class_names)
        except ValueError as e:
            raise UsageError(f"--classes: {e}") from None
        if idx >= num_classes:
            raise UsageError(f"--classes: class {idx} out of range 0..{num_classes - 1}")
        out.append(idx)
    if not out:
        raise UsageError("--classes is empty")
    return sorted(set(out))


def fit_method(
    model: Model,
    method: Method,
    data: Path,
    *,
    params: dict,
    state_dir=None,
    batch_size: int = 32,
    preset: str | None = None,
    resize: int | None = None,
    mean=None,
    std=None,
    classes: str | None = None,
    samples: int | None = None,
    layer: str | None = None,
    labels: Path | None = None,
    console=None,
) -> Path:
    from ..data.datasets import class_names_of, read_dataset

    params = dict(params)
    names = {p.name for p in method.params}
    if layer is not None:
        if "layer" not in names:
            raise UsageError(f"method {method.name!r} has no layer to choose (--layer)")
        params["layer"] = layer
    class_names = class_names_of(model)
    wanted = _resolve_classes(classes, class_names, model.num_classes) if classes else None
    if wanted is not None and "classes" in names:
        params["classes"] = ",".join(map(str, wanted))
    values = validate_params(method.params, params, f"method {method.name!r}")
    check_requirements(model, method)  # e.g. mip-in on a GELU model: refused before reading data
    check_state_folder(model.digest, method.name, state_dir)  # never write through a link
    rows = read_dataset(Path(data), class_names=class_names, labels=labels)
    found = [s for s in rows if s.error is None]
    bad = [s.error for s in rows if s.error is not None]
    labelled = any(s.label is not None for s in found)
    if wanted is not None and labelled:
        found = [s for s in found if s.label in wanted]
    if samples is not None:
        if samples < 1:
            raise UsageError("--samples must be at least 1")
        if labelled:
            seen: dict = {}
            kept = []
            for s in found:
                seen[s.label] = seen.get(s.label, 0) + 1
                if seen[s.label] <= samples:
                    kept.append(s)
            found = kept
        else:
            found = found[:samples]
    if not found:
        raise InputDataError(
            "no usable images"
            + (" of the chosen classes" if wanted else "")
            + (f" ({len(bad)} unusable row(s), e.g. {bad[0]})" if bad else ""),
            path=data,
        )
    if bad:
        import warnings

        warnings.warn(f"{data}: skipped {len(bad)} unusable row(s), e.g. {bad[0]}", stacklevel=2)
    paths = [s.path for s in found]
    labels_ = [-1 if s.label is None else int(s.label) for s in found]
    preprocess = Preprocess.for_model(model, preset=preset, resize=resize, mean=mean, std=std)

    def batches(labels: bool = False) -> Iterator:  # a fresh stream for each epoch a method needs
        return iter_batches(
            model, paths, preprocess, batch_size, labels=labels_ if labels else None
        )

    fit_console = console if isinstance(console, FitConsole) else FitConsole(console)
    fit = method.fit_fn()
    if fit is None:
        raise UsageError(f"method {method.name!r} learns nothing from data (it has no fit step)")
    try:
        from ..plugins.boundary import no_process_exit

        with no_process_exit():  # os._exit inside fit is the plugin's failure too
            result = fit(model, batches, values, fit_console)
    except InputDataError as e:  # a method's complaint about the data names DATA
        if e.path is None:
            e.path = str(data)
        raise
    except XplainError:
        raise
    except SystemExit as e:  # the plugin boundary: sys.exit() inside fit is the plugin's failure
        called = str(e) if type(e).__name__ == "PluginExit" else f"sys.exit({e.code!r})"
        raise PluginError(f"method {method.name!r} called {called} while fitting") from None
    except Exception as e:  # noqa: BLE001 - a fit's bug is the plugin's failure, not a traceback
        raise PluginError(
            f"method {method.name!r} failed while fitting: {type(e).__name__}: {e}"
        ) from None
    tensors, meta = result if isinstance(result, tuple) and len(result) == 2 else (None, None)
    if not isinstance(tensors, dict) or not isinstance(meta, dict):
        raise PluginError(
            f"method {method.name!r}: fit must return (dict of tensors, dict of metadata)"
        )
    meta = {
        **meta,
        "params": values,
        "samples": len(paths),
        "data": str(data),
        "preprocess": preprocess.to_dict(),
    }
    return save_state(model.digest, method.name, tensors, meta, root=state_dir)

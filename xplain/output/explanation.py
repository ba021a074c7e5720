"""``xplain.explain`` for people: images, photos or tensors in; a result that draws itself.

Why here, in the output stage: the result renders its overlay and panel and saves what
``xplain explain`` writes, with the CLI's own drawing and writing code
(:mod:`xplain.output.render`, :mod:`xplain.output.panel`, :mod:`xplain.run.explaining`), so a
notebook and the CLI never draw or name files differently. The computing is
:func:`xplain.run.api.explain`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.images import Geometry
from ..data.preprocessing import as_image
from ..errors import UsageError
from ..fileio import atomic_group, write_json
from ..graph.model import Model
from ..plugins.plugin_api import Attribution, Method
from ..plugins.registry import Registry, get_registry
from ..run import api
from ..run import explaining as files
from ..run.api_inputs import check_batch
from ..untrusted import path_text
from .panel import PanelRow, panel_figure
from .render import RenderOptions, overlay_image


@dataclasses.dataclass
class Explanation(Attribution):
    """An :class:`~xplain.Attribution` (``maps`` B×H×W, ``extras``, ``info``) that remembers
    what it explains, so it can draw and save itself.

    ``images`` are the photos (PIL) when the input was paths or PIL images, else None (a
    tensor input is drawn as the model input itself, de-normalised per channel to 0..255)."""

    model: Model | None = None
    method: str = ""
    params: dict = dataclasses.field(default_factory=dict)
    x: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    _probs: list[float] | None = dataclasses.field(default=None, repr=False)
    images: list[Image.Image] | None = None
    geometries: list[Geometry] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)
    seed: int = 0

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    @property
    def probabilities(self) -> list[float]:
        """The model's probability of each image's target (softmax of the logits), computed on
        first use so that explaining costs no forward pass beyond the method's own."""
        if self._probs is None:
            assert self.model is not None and self.x is not None and self.targets is not None
            with torch.no_grad():
                probs = torch.softmax(self.model(self.x).float(), dim=1)
            self._probs = [float(probs[i, int(t)]) for i, t in enumerate(self.targets)]
        return self._probs

    def _photo(self, i: int) -> tuple[Image.Image, Geometry]:
        if self.images is not None:
            return self.images[i], self.geometries[i]
        assert self.x is not None
        a = self.x[i].detach().float().cpu()
        lo, hi = a.amin(dim=(1, 2), keepdim=True), a.amax(dim=(1, 2), keepdim=True)
        a = ((a - lo) / (hi - lo).clamp_min(1e-12) * 255).round().byte()
        array = a.permute(1, 2, 0).numpy()
        img = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        w, h = img.size
        return img, Geometry((w, h), (w, h), (0, 0, w, h))

    def overlay(self, index: int = 0, render: RenderOptions | None = None) -> Image.Image:
        """Map ``index`` drawn onto its photo through the resize and crop, as the CLI's
        ``NAME.METHOD.TARGET.overlay.png`` (a PIL RGB image; ``render``: the CLI's
        ``--percentile`` / ``--grey``)."""
        render = render or RenderOptions()
        image, geometry = self._photo(index)
        return overlay_image(
            image,
            self.maps[index].detach().float().cpu().numpy(),
            geometry,
            alpha=render.alpha,
            percentile=render.percentile,
            grey=render.grey,
        )

    def panel(self, index: int = 0, render: RenderOptions | None = None):
        """The CLI's panel of image ``index`` (the photo and the overlay) as a matplotlib
        ``Figure`` (``fig.savefig(...)``; in a notebook it displays itself)."""
        render = render or RenderOptions()
        image, geometry = self._photo(index)
        assert self.model is not None and self.targets is not None
        t = int(self.targets[index])
        row = PanelRow(
            t,
            self.model.label(t),
            self.probabilities[index],
            {self.method: self.maps[index].detach().float().cpu().numpy()},
        )
        return panel_figure(
            image,
            geometry,
            [row],
            [self.method],
            title=self.names[index] if self.names else None,
            percentile=render.percentile,
            grey=render.grey,
            alpha=render.alpha,
        )

    def save(
        self,
        folder: str | os.PathLike[str],
        render: RenderOptions | None = None,
        panel: bool = False,
    ) -> list[dict]:
        """Write what ``xplain explain`` writes into ``folder``, with its code and names: per
        image ``NAME.METHOD.TARGET.{heatmap.png,overlay.png,npy,json}`` (and the method's
        extras), with ``panel`` also ``NAME.panel.png``. Returns the JSON records."""
        assert self.model is not None and self.x is not None and self.targets is not None
        render = render or RenderOptions()
        out = Path(folder)
        count = len(self)
        originals, drawn = [], []
        for i in range(count):
            image, geometry = self._photo(i)
            small, small_geometry = files._drawable(image, geometry)
            originals.append(small)
            drawn.append(small_geometry)
        names = files._unique_stems(self.names or [f"image{i}" for i in range(count)])
        paths = [Path(n) for n in (self.names or names)]
        job = files._Job(self.model, paths, names, out, render, self.seed, max(1, count))
        probs = torch.zeros(count, self.model.num_classes)
        for i in range(count):
            probs[i, int(self.targets[i])] = self.probabilities[i]
        geometries = self.geometries or [self._photo(i)[1] for i in range(count)]
        batch = files._Batch(0, originals, geometries, self.x, probs, drawn)
        common = {
            "model": {"path": path_text(self.model.report.path), "digest": self.model.digest},
            "seed": self.seed,
            "device": str(self.model.device),
            "render": render.to_dict(),
            "versions": files.versions(),
            "method": self.method,
            "params": self.params,
            "labels": self.model.labels_source,
        }
        items = [
            files._Item(i, int(self.targets[i]), self.probabilities[i], names[i])
            for i in range(count)
        ]
        records: list[dict] = []
        maps = self.maps.detach().float().cpu().numpy()
        from .render import is_signed

        signed = any(is_signed(m) for m in maps)  # one scheme for the method's maps, as the CLI
        with atomic_group():
            for j, item in enumerate(items):
                record = files._write_outputs(
                    job, item, maps[j], self, j, batch, self.method, signed
                )
                record.update(common, _index=item.index)
                records.append(record)
            if panel:
                found = {(it.index, it.target, self.method): maps[it.index] for it in items}
                files._write_panels(job, [self.method], items, batch, found, records)
            for record in records:
                del record["_index"]
                write_json(record.pop("_json"), record)
        return records


def _inputs(
    model: Model, inputs: Any, preprocess: dict
) -> tuple[torch.Tensor, list | None, list, list]:
    """(x, photos or None, geometries, names) for a tensor, a path, a PIL image or a list."""
    if isinstance(inputs, (torch.Tensor, np.ndarray)):  # checked as xplain.run.api.explain does
        return check_batch(model, inputs), None, [], []
    items = (
        list(inputs) if isinstance(inputs, Sequence) and not isinstance(inputs, str) else [inputs]
    )
    if not items:
        raise UsageError("no images given")
    xs, photos, geometries, names = [], [], [], []
    for i, item in enumerate(items):
        image = as_image(item)
        x, geometry = model.preprocess(image, **preprocess)
        xs.append(x)
        photos.append(image)
        geometries.append(geometry)
        names.append(Path(item).stem if isinstance(item, (str, os.PathLike)) else f"image{i}")
    return torch.cat(xs), photos, geometries, names


def explain(
    model: Model | str | os.PathLike[str] | torch.nn.Module,
    inputs: Any,
    targets: Any = None,
    method: str | Method = "saliency",
    params: dict | None = None,
    seed: int = 0,
    registry: Registry | None = None,
    *,
    target: Any = None,
    baselines: torch.Tensor | None = None,
    example_input: torch.Tensor | None = None,
    engine: str | None = None,
    preset: str | None = None,
    resize: int | None = None,
    mean: float | tuple[float, ...] | None = None,
    std: float | tuple[float, ...] | None = None,
) -> Explanation:
    """Explain ``inputs`` with ``method``; the result draws and saves itself (:class:`Explanation`).

    ``model``: a :class:`~xplain.Model`, a model file, or a ``torch.nn.Module`` (exported
    through the front door, :func:`xplain.load_model`; ``example_input`` defaults to ``inputs``
    when that is a tensor). ``inputs``: a preprocessed batch (a B×C×H×W tensor or array), an image path,
    a PIL image, or a list of paths/images (preprocessed by :meth:`~xplain.Model.preprocess`
    with ``preset``/``resize``/``mean``/``std``, the CLI's rules). ``targets`` (or Captum's
    ``target``): None = top-1, one int for all images, or one per image. ``baselines``: a
    reference input for methods that take one (integrated-gradients). ``engine``: what
    forward-only work runs on (auto, torch, onnxruntime; None: the model's)."""
    if target is not None:
        if targets is not None:
            raise UsageError("give targets or target, not both")
        targets = target
    if not isinstance(model, Model):
        if isinstance(model, torch.nn.Module):
            example = example_input if example_input is not None else inputs
            model = api.load_model(model, example if isinstance(example, torch.Tensor) else None)
        else:
            model = api.load_model(Path(model))
    registry = registry or get_registry()
    chosen = registry.method(method) if isinstance(method, str) else method
    options = {"preset": preset, "resize": resize, "mean": mean, "std": std}
    x, photos, geometries, names = _inputs(model, inputs, options)
    resolved = api.resolve_targets(model, x, targets)
    result = api.explain(
        model, x, resolved, chosen, params, seed, registry, baselines=baselines, engine=engine
    )
    values = api.validate_params(chosen.params, params or {}, f"method {chosen.name!r}")
    return Explanation(
        maps=result.maps,
        extras=result.extras,
        info=result.info,
        sample_info=result.sample_info,
        model=model,
        method=chosen.name,
        params=values,
        x=x,
        targets=resolved,
        images=photos,
        geometries=geometries,
        names=names,
        seed=seed,
    )

"""``mip-in``, fitting (``xplain fit mip-in``): per class, top-down, the inverses of Algorithm 1.

The longest and most numerical part of the method: streaming each class's samples, the
closed-form ridge inverses (dense, global pooling, BatchNorm; eq. 6), the transposed
convolutions trained with Adam (eq. 7) or solved exactly (``conv_solver=lstsq``), and ``fit``,
which assembles the state that :func:`.invert.load` reads back. torch is imported inside
functions.
"""

from __future__ import annotations

import xplain

from .chain import _act, _activations, _step_meta, build_chain
from .invert import STATE_VERSION, _forget_state, _inverse, _output_padding, _propagate

FITTED = ("dense", "conv", "gap", "affine")


# ----------------------------------------------------------------------------- class data
def _parse_classes(model, text: str) -> list[int] | None:
    if not text.strip():
        return None
    out = []
    for item in text.split(","):
        item = item.strip()
        if item.lstrip("-").isdigit():
            idx = int(item)
        elif model.labels and item in model.labels:
            idx = model.labels.index(item)
        else:
            raise xplain.UsageError(
                f"mip-in: unknown class {item!r}", hint="give class indices or label names"
            )
        if not 0 <= idx < model.num_classes:
            raise xplain.UsageError(f"mip-in: class {idx} out of range 0..{model.num_classes - 1}")
        out.append(idx)
    return sorted(set(out))


def _labelled(model, batches):
    """(x, labels) batches; unknown labels (or a plain x stream) become the model's prediction."""
    import torch

    try:
        stream = batches(labels=True)
    except TypeError:  # an older stream that yields x only
        stream = batches()
    for item in stream:
        x, labels = item if isinstance(item, (tuple, list)) else (item, None)
        if labels is None:
            labels = torch.full((x.shape[0],), -1, dtype=torch.long)
        labels = torch.as_tensor(labels).to(x.device).long()
        if (labels < 0).any():
            with torch.no_grad():
                labels = torch.where(labels < 0, model(x).argmax(1), labels)
        yield x, labels


class _ClassData:
    """The inputs of one class, cached in memory up to ``cache_bytes``, else re-streamed."""

    def __init__(self, model, batches, cls, batch_size, cache_bytes=256 * 2**20):
        self.model, self.batches, self.cls, self.batch_size = model, batches, cls, batch_size
        self.cached, self.count = [], 0
        size = 0
        for x in self._stream():
            self.count += x.shape[0]
            size += x.numel() * x.element_size()
            if self.cached is not None:
                self.cached.append(x)
                if size > cache_bytes:
                    self.cached = None

    def _stream(self):
        import torch

        pending = []
        have = 0
        for x, labels in _labelled(self.model, self.batches):
            keep = x[labels == self.cls]
            if keep.shape[0]:
                pending.append(keep)
                have += keep.shape[0]
            while have >= self.batch_size:
                allx = torch.cat(pending)
                yield allx[: self.batch_size]
                pending, have = [allx[self.batch_size :]], have - self.batch_size
        if have:
            yield torch.cat(pending)

    def __iter__(self):
        return iter(self.cached) if self.cached is not None else self._stream()


# ----------------------------------------------------------------------------- the inverses of one class
def _fit_class(model, start, steps, data, cls, params, task):
    """Fit every inverse of one class top-down (Algorithm 1); returns (inverses, errors)."""

    inv: dict[int, dict] = {}
    errors: dict[str, dict] = {}
    gating = params["gating"]
    for k in range(len(steps) - 1, -1, -1):
        step = steps[k]
        if step["kind"] not in FITTED:
            continue
        if task is not None:
            task.update(f"class {cls}: {step['kind']} {step['node']}")

        def pairs():  # (S at this step's output, true X at its input) per batch; used in this iteration
            for x in data:
                logits, acts = _activations(model, x, start, steps)
                s = logits[:, cls : cls + 1]
                s = _propagate(steps, inv, s, acts, k + 1, gating=gating)  # noqa: B023
                yield s, _act(acts, step["input"], start)  # noqa: B023

        if step["kind"] == "conv" and params.get("conv_solver") == "lstsq":
            inv[k], errors[step["node"]] = _fit_conv_lstsq(step, pairs, params["ridge"])
            if task is not None:
                task.advance(params["epochs"])
        elif step["kind"] == "conv":
            inv[k], errors[step["node"]] = _fit_conv(step, pairs, params, task)
        else:
            inv[k], errors[step["node"]] = _fit_closed(step, pairs, params["ridge"])
            if task is not None:
                task.advance(1)
    return inv, errors


def _solve(a, b):
    """``a⁻¹ b`` for a symmetric PSD ``a``; the minimum-norm least-squares solution when ``a`` is
    singular (λ = 0 with fewer samples than regressors, or regressors that are always zero)."""
    import torch

    try:
        return torch.linalg.solve(a, b)
    except RuntimeError:  # torch.linalg.LinAlgError
        return torch.linalg.pinv(a, hermitian=True) @ b


def _fit_closed(step, pairs, lam):
    """Ridge regression X ≈ W S + b on centred data, accumulated in float64 (eq. 6).

    dense: full W; gap: channel c of S feeds only channel c of X, with one slope per channel
    shared by all positions and an intercept per position; affine (BatchNorm): one scalar
    regression per channel, pooled over positions."""
    import torch

    kind = step["kind"]
    n = 0
    acc = {}
    for s, x in pairs():
        s, x = s.double(), x.double()
        b = s.shape[0]
        if kind == "dense":
            s2, x2 = s.reshape(b, -1), x.reshape(b, -1)
            terms = {
                "s": s2.sum(0),
                "x": x2.sum(0),
                "ss": s2.T @ s2,
                "xs": x2.T @ s2,
                "xx": (x2 * x2).sum(),
            }
        elif kind == "gap":
            s2 = s.reshape(b, -1, 1, 1)
            terms = {
                "s": s2.sum(0),
                "x": x.sum(0),
                "ss": (s2 * s2).sum(0),
                "xs": (x * s2).sum(0),
                "xx": (x * x).sum(0),
            }
        else:  # affine: pool over positions
            hw = x.shape[2] * x.shape[3]
            terms = {
                "s": s.sum((0, 2, 3)),
                "x": x.sum((0, 2, 3)),
                "ss": (s * s).sum((0, 2, 3)),
                "xs": (x * s).sum((0, 2, 3)),
                "xx": (x * x).sum((0, 2, 3)),
            }
            b = b * hw
        for key, value in terms.items():
            acc[key] = acc[key] + value if key in acc else value
        n += b
    if n < 2:
        raise xplain.InputDataError(f"mip-in needs at least 2 samples per class, got {n}")
    mu_s, mu_x = acc["s"] / n, acc["x"] / n
    if kind == "dense":
        css = acc["ss"] - n * torch.outer(mu_s, mu_s)
        cxs = acc["xs"] - n * torch.outer(mu_x, mu_s)
        eye = torch.eye(css.shape[0], dtype=css.dtype, device=css.device)
        w = _solve(css + lam * eye, cxs.T).T
        bias = mu_x - w @ mu_s
        sse = (acc["xx"] - n * (mu_x @ mu_x)) - 2 * (w * cxs).sum() + (w @ css * w).sum()
        sst = acc["xx"] - n * (mu_x @ mu_x)
        count = n * mu_x.numel()
    elif kind == "gap":  # one slope per channel, shared by all positions; intercept per position
        css = acc["ss"] - n * mu_s * mu_s  # C×1×1
        cxs = acc["xs"] - n * mu_x * mu_s  # C×H×W
        hw = cxs.shape[1] * cxs.shape[2]
        w = cxs.sum((1, 2), keepdim=True) / (hw * css + lam)
        bias = mu_x - w * mu_s
        sst_el = acc["xx"] - n * mu_x * mu_x
        sse = (sst_el - 2 * w * cxs + w * w * css).sum()
        sst = sst_el.sum()
        count = n * mu_x.numel()
        w = w.reshape(-1)
    else:
        css = acc["ss"] - n * mu_s * mu_s
        cxs = acc["xs"] - n * mu_x * mu_s
        w = cxs / (css + lam)
        bias = mu_x - w * mu_s
        sst_el = acc["xx"] - n * mu_x * mu_x
        sse = (sst_el - 2 * w * cxs + w * w * css).sum()
        sst = sst_el.sum()
        count = n * mu_x.numel()
    errors = {
        "mse": float(sse.clamp(min=0) / count),
        "relative": float(sse.clamp(min=0) / sst.clamp(min=1e-30)),
        "samples": n,
    }
    return {"weight": w.float(), "bias": bias.float()}, errors


def _fit_conv(step, pairs, params, task):
    """A transposed convolution with the layer's geometry and free weights (eq. 7).

    Zero-initialised (deterministic, no random state) and trained with Adam on the mean squared
    reconstruction error for ``epochs`` passes over the class's samples."""
    import torch
    import torch.nn.functional as F

    weight = bias = opt = None
    history = []
    sst = sxx = None
    count = 0
    for epoch in range(params["epochs"]):
        xplain.report_progress(epoch, params["epochs"], "fit epochs")
        total, elems = 0.0, 0
        for s, x in pairs():
            if weight is None:
                c_s, c_x = s.shape[1], x.shape[1]
                kh, kw = step["kernel"]
                weight = torch.zeros(
                    c_s,
                    c_x // step["groups"],
                    kh,
                    kw,
                    device=s.device,
                    dtype=s.dtype,
                    requires_grad=True,
                )
                bias = torch.zeros(c_x, device=s.device, dtype=s.dtype, requires_grad=True)
                opt = torch.optim.Adam([weight, bias], lr=params["lr"])
            if epoch == 0:  # for the relative error: variance of X around its per-element mean
                xd = x.double()
                sst = xd.sum(0) if sst is None else sst + xd.sum(0)
                sxx = (xd * xd).sum(0) if sxx is None else sxx + (xd * xd).sum(0)
                count += x.shape[0]
            for part in range(0, s.shape[0], params["conv_batch"]):
                sb, xb = (
                    s[part : part + params["conv_batch"]],
                    x[part : part + params["conv_batch"]],
                )
                with torch.enable_grad():
                    rec = _inverse(step, {"weight": weight, "bias": bias}, sb, None)
                    loss = F.mse_loss(rec, xb)
                    opt.zero_grad()
                    loss.backward()
                opt.step()
                loss = loss.detach()
                total += loss.item() * xb.numel()
                elems += xb.numel()
        history.append(total / max(elems, 1))
        if task is not None:
            task.advance(1)
    if count < 2:
        raise xplain.InputDataError(f"mip-in needs at least 2 samples per class, got {count}")
    # final error of the trained inverse, one more pass without updates
    total, elems = 0.0, 0
    with torch.no_grad():
        for s, x in pairs():
            rec = _inverse(step, {"weight": weight, "bias": bias}, s, None)
            total += float(((rec - x) ** 2).sum())
            elems += x.numel()
    var = float((sxx - sst * sst / count).sum()) / elems
    mse = total / elems
    errors = {"mse": mse, "relative": mse / max(var, 1e-30), "samples": count, "epoch_mse": history}
    return {"weight": weight.detach(), "bias": bias.detach()}, errors


def _conv_features(step, s):
    """The transposed convolution's regressors: one output channel per weight (c_s, u, v).

    A transposed convolution is linear in its weights: output channel i at position p is
    Σ W[c, i, u, v]·φ[c, u, v](S)[p]. Computing φ with the very same conv_transpose2d call (a
    one-hot weight per regressor) keeps stride, padding, dilation and cropping identical to
    :func:`_inverse`."""
    import torch
    import torch.nn.functional as F

    c_s = s.shape[1]
    kh, kw = step["kernel"]
    n_f = c_s * kh * kw
    onehot = torch.zeros(c_s, n_f, kh, kw, device=s.device, dtype=s.dtype)
    idx = torch.arange(n_f, device=s.device)
    onehot[idx // (kh * kw), idx, (idx // kw) % kh, idx % kw] = 1
    out = F.conv_transpose2d(
        s,
        onehot,
        None,
        stride=step["stride"],
        padding=step["padding"],
        dilation=step["dilation"],
        output_padding=_output_padding(step, s.shape[-2:]),
    )
    return out[..., : step["in_shape"][1], : step["in_shape"][2]]


def _fit_conv_lstsq(step, pairs, lam):
    """The least-squares transposed convolution (ridge on the weights, free bias), streamed."""
    import torch

    if step["groups"] != 1:
        raise xplain.UsageError(
            "conv_solver=lstsq supports only ungrouped convolutions; use conv_solver=adam"
        )
    gram = cross = None
    n = 0
    sx = sxx = None
    for s, x in pairs():
        for i in range(0, s.shape[0], 8):  # a few samples at a time: the regressors are large
            phi = _conv_features(step, s[i : i + 8]).double()
            xb = x[i : i + 8].double()
            phi = (
                torch.cat([phi, torch.ones_like(phi[:, :1])], 1)
                .transpose(0, 1)
                .reshape(phi.shape[1] + 1, -1)
            )
            target = xb.transpose(0, 1).reshape(xb.shape[1], -1)
            g, r = phi @ phi.T, phi @ target.T
            gram, cross = (g, r) if gram is None else (gram + g, cross + r)
            sx = xb.sum(0) if sx is None else sx + xb.sum(0)
            sxx = (xb * xb).sum(0) if sxx is None else sxx + (xb * xb).sum(0)
            n += xb.shape[0]
    if n < 2:
        raise xplain.InputDataError(f"mip-in needs at least 2 samples per class, got {n}")
    reg = torch.full((gram.shape[0],), lam, dtype=gram.dtype, device=gram.device)
    reg[-1] = 0  # the bias is not penalised
    sol = _solve(gram + torch.diag(reg), cross)
    kh, kw = step["kernel"]
    c_x = cross.shape[1]
    weight = sol[:-1].reshape(-1, kh, kw, c_x).permute(0, 3, 1, 2)
    sse = float((sxx.sum() - 2 * (sol * cross).sum() + (sol * (gram @ sol)).sum()).clamp(min=0))
    elems = n * sx.numel()
    mse = sse / elems
    var = float((sxx - sx * sx / n).sum()) / elems
    errors = {"mse": mse, "relative": mse / max(var, 1e-30), "samples": n, "solver": "lstsq"}
    return {"weight": weight.float().contiguous(), "bias": sol[-1].float()}, errors


# ----------------------------------------------------------------------------- fit
def fit(model, batches, params, console=None):
    """Method.fit: per class, top-down, the inverses of Algorithm 1.

    ``batches(labels=True)`` yields ``(x, labels)`` (label -1 = unknown: the model's prediction
    is used); a stream that yields only x is labelled by prediction."""
    import time

    import torch

    _forget_state(model)
    start, raw = build_chain(model, params["layer"])
    steps = [_step_meta(s) for s in raw]
    wanted = _parse_classes(model, params["classes"])
    present: dict[int, int] = {}
    for _x, labels in _labelled(model, batches):
        for c in labels.tolist():
            present[c] = present.get(c, 0) + 1
    classes = wanted if wanted is not None else sorted(present)
    missing = [c for c in classes if present.get(c, 0) < 2]
    if missing and wanted is None and len(missing) < len(classes):  # fit what can be fitted
        classes = [c for c in classes if c not in missing]
        if console is not None:
            console.print(f"mip-in: skipping class(es) {missing}: fewer than 2 samples each")
        missing = []
    if missing:
        raise xplain.InputDataError(
            f"mip-in needs at least 2 samples of each class it fits; class(es) {missing} have "
            f"{[present.get(c, 0) for c in missing]}",
            hint="add images of those classes or pass --classes",
        )
    units = sum(
        params["epochs"] if s["kind"] == "conv" else 1 for s in steps if s["kind"] in FITTED
    )
    tensors, errors, counts = {}, {}, {}
    t0 = time.perf_counter()
    batch = 64
    for cls in classes:
        maker = getattr(console, "task", None)
        task = maker(f"mip-in class {cls}", total=units) if maker else None
        try:
            data = _ClassData(model, batches, cls, batch)
            torch.manual_seed(0)
            inv, err = _fit_class(model, start, steps, data, cls, params, task)
        finally:
            if task is not None:
                task.close()
        for k, t in inv.items():
            for key, value in t.items():
                tensors[f"c{cls}.s{k}.{key}"] = value.contiguous()
        errors[str(cls)] = err
        counts[str(cls)] = data.count
    meta = {
        "state_version": STATE_VERSION,
        "start": start or "input",
        "mode": "chain" if start is None else "head",
        "steps": steps,
        "classes": classes,
        "class_labels": [model.label(c) for c in classes],
        "lambda": params["ridge"],
        "epochs": params["epochs"],
        "lr": params["lr"],
        "conv_batch": params["conv_batch"],
        "conv_solver": params["conv_solver"],
        "gating": params["gating"],
        "samples_per_class": counts,
        "reconstruction_errors": errors,
        "fit_seconds": round(time.perf_counter() - t0, 3),
    }
    return tensors, meta

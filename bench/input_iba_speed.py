"""InputIBA's cost on the pretrained EfficientNet-Lite0 at 224×224 (docs/input-iba.md, "Speed").

    flock /tmp/xplain-timing.lock env OMP_NUM_THREADS=1 .venv/bin/python bench/input_iba_speed.py parts
    flock /tmp/xplain-timing.lock env OMP_NUM_THREADS=1 .venv/bin/python bench/input_iba_speed.py \
        batches --batches 1,4
    nice -n 15 .venv/bin/python bench/input_iba_speed.py full        # one map at the defaults

``parts``: CPU seconds of each part of the work per generated sample (stage 2) or per noisy copy
(stage 3), and as a multiple of one forward pass of the whole network (batch 8, timed in the same
run): the critic, one WGAN-GP critic step with the critic's former ``F.leaky_relu`` and with the
constant-slope one (same numbers, see tests/test_iba.py), the model's prefix up to the bottleneck
layer, and stage 3's full forward + backward.
``batches``: per-image CPU time of ``input-iba`` at batch sizes 1, 4, 8 on copies of scikit-image's
``chelsea``, with ``gan_epochs`` and ``input_steps`` reduced (default 1 and 6) and each stage scaled
linearly to the defaults (20 epochs, 60 steps): stage 1 as measured, the GAN stage × 20 /
gan_epochs, stage 3 × 60 / input_steps; ``--gan-dataset 64`` shrinks an epoch to 2 critic
batches for a quicker batch-size comparison (then the scaled figure is not the defaults'; the two gradient-free probe passes of ``gan_w2`` are
scaled with the epochs, so the GAN figure is a slight over-estimate).
``full``: one map at the defaults, wall-clock and CPU time.
``--critic-precision`` (``batches``, ``full``): ``auto`` here by default (bfloat16 where the CPU
has it natively); the method's own default is ``float32``.
All use one thread (``torch.set_num_threads(1)``) and CPU time (``time.process_time``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import readme_pictures  # noqa: E402

import xplain  # noqa: E402
from xplain.data.images import Preprocess, load_image  # noqa: E402

DEFAULT_EPOCHS, DEFAULT_STEPS = 20, 60


def setup():
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = xplain.load_model(readme_pictures.export_model(), device="cpu")
    from PIL import Image
    from skimage import data

    path = readme_pictures.CACHE / "chelsea.png"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.chelsea()).save(path)
    pre = Preprocess.from_options((3, 224, 224), sidecar=model.sidecar)
    x = torch.from_numpy(pre(load_image(path))[0])[None]
    return model, x


def cpu_time(fn, reps=2):
    """CPU seconds of one call (after one warm-up call)."""
    fn()
    began = time.process_time()
    for _ in range(reps):
        fn()
    return (time.process_time() - began) / reps


def parts(model, x):
    import torch.nn.functional as F

    from xplain_builtins.methods.iba import iba_input

    layer = model.bottleneck_layer().name
    split = model.split_at(layer)
    n = 32  # gan_batch
    c, h, w = split.features(x).shape[1:]
    gens = [torch.Generator().manual_seed(0)]
    g = torch.Generator().manual_seed(1)
    real = torch.randn(1, n, c, h, w, generator=g)
    fake = torch.randn(1, n, c, h, w, generator=g)
    z8 = torch.randn(8, *x.shape[1:], generator=g)
    mask = torch.zeros_like(x, requires_grad=True)
    rows = {}

    def critic(bn, amp=None):
        return iba_input.GroupedCritic(
            1, c, h, w, gens, "cpu", torch.float32, batch_norm=bn, amp=amp
        )

    def forward():
        with torch.no_grad():
            model(z8)

    fwd = cpu_time(forward, 3) / 8
    rows["one forward pass of Lite0 (batch 8, per image)"] = (fwd, 1.0)

    def per(name, fn, count, reps=1):
        t = cpu_time(fn, reps) / count
        rows[name] = (t, t / fwd)
        print(f"{name:62s} {t:8.4f} s  {t / fwd:6.2f} x forward", flush=True)

    gp, clip = critic(False), critic(True)
    amp = iba_input.critic_amp("auto", x)  # what critic_precision=auto picks here

    def critic_forward():
        with torch.no_grad():
            gp(fake)

    def gp_step():
        d = (gp(fake).mean(1) - gp(real).mean(1)).sum()
        d = d + 10 * iba_input._gradient_penalty(gp, real, fake, gens)
        d.backward(inputs=gp.params)

    def penalty():
        (10 * iba_input._gradient_penalty(gp, real, fake, gens)).backward(inputs=gp.params)

    def clip_step():
        (clip(fake).mean(1) - clip(real).mean(1)).sum().backward(inputs=clip.params)

    def generator_critic():
        f = fake[0].clone().requires_grad_(True)
        (-gp(f[None]).mean(1).sum()).backward(inputs=[f])

    low_critics = (critic(False, amp), critic(True, amp)) if amp is not None else None

    def low_precision(fn):  # the same part with the default critic (bfloat16 where native)
        def run():
            nonlocal gp, clip
            saved = gp, clip
            gp, clip = low_critics
            try:
                fn()
            finally:
                gp, clip = saved

        return run

    def prefix_forward():
        with torch.no_grad():
            split.features(z8)

    def prefix_backward():
        split.features(z8 * torch.sigmoid(mask)).sum().backward(inputs=[mask])

    def full_backward():
        model(z8 * torch.sigmoid(mask)).sum().backward(inputs=[mask])

    per("critic forward (per sample)", critic_forward, n)
    per("critic step, gp (per sample)", gp_step, n)
    per("  of which the gradient penalty", penalty, n)
    original = iba_input._leaky_relu
    iba_input._leaky_relu = lambda t: F.leaky_relu(t, 0.2)
    try:
        per("critic step, gp, former F.leaky_relu (per sample)", gp_step, n)
        per("  of which the gradient penalty, former F.leaky_relu", penalty, n)
    finally:
        iba_input._leaky_relu = original
    per("critic step, clip (per sample)", clip_step, n)
    per("generator step's critic forward + backward (per sample)", generator_critic, n)
    if amp is not None:
        per("critic forward, bfloat16 (per sample)", low_precision(critic_forward), n)
        per("critic step, gp, bfloat16 (per sample)", low_precision(gp_step), n)
        per("critic step, clip, bfloat16 (per sample)", low_precision(clip_step), n)
        per("generator step's critic, bfloat16 (per sample)", low_precision(generator_critic), n)
    per("prefix forward, no graph (per sample)", prefix_forward, 8, 3)
    per("prefix forward + backward to the mask (per sample)", prefix_backward, 8, 3)
    per("stage 3: full forward + backward to the mask (per copy)", full_backward, 8, 3)
    t = {k: v[0] for k, v in rows.items()}
    epoch = (
        200 * t["critic step, gp (per sample)"]
        + 136 * t["prefix forward, no graph (per sample)"]
        + 64 * t["prefix forward + backward to the mask (per sample)"]
        + 64 * t["generator step's critic forward + backward (per sample)"]
    )
    former = epoch + 200 * (
        t["critic step, gp, former F.leaky_relu (per sample)"] - t["critic step, gp (per sample)"]
    )
    low = epoch
    if amp is not None:
        low += 200 * (
            t["critic step, gp, bfloat16 (per sample)"] - t["critic step, gp (per sample)"]
        ) + 64 * (
            t["generator step's critic, bfloat16 (per sample)"]
            - t["generator step's critic forward + backward (per sample)"]
        )
    stage3 = 600 * t["stage 3: full forward + backward to the mask (per copy)"]
    out = {
        "forward_s": fwd,
        "parts": {k: {"s": v[0], "x_forward": v[1]} for k, v in rows.items()},
        "predicted_map_s": {
            "gan_float32": 20 * epoch,
            "gan_default": 20 * low,
            "input": stage3,
            "gan_former": 20 * former,
        },
    }
    print(
        f"predicted per map: GAN {20 * low:.0f} s with critic_precision=auto "
        f"(float32 {20 * epoch:.0f} s, former {20 * former:.0f} s), stage 3 {stage3:.0f} s"
    )
    return out


def batches(model, x, sizes, epochs, steps, dataset=None, precision="auto"):
    out = {}
    for b in sizes:
        xb = x.expand(b, -1, -1, -1).contiguous()
        params = {"gan_epochs": epochs, "input_steps": steps, "critic_precision": precision}
        if dataset:  # fewer GAN samples per epoch: then the scaled figure is not the defaults'
            params["gan_dataset"] = dataset
        began = time.process_time()
        a = xplain.explain(model, xb, method="input-iba", params=params, seed=0)
        total = time.process_time() - began
        st = a.info["stage_cpu_seconds"]
        scaled = (
            st["feature"]
            + st["gan"] * DEFAULT_EPOCHS / epochs
            + st["input"] * DEFAULT_STEPS / steps
        )
        out[b] = {
            "cpu_s": round(total, 2),
            "stage_cpu_s": st,
            "per_image_at_defaults_s": round(scaled / b, 1),
        }
        print(json.dumps({b: out[b]}), flush=True)
    one = out.get(1, {}).get("per_image_at_defaults_s")
    for row in out.values():
        if one:
            row["vs_batch_1"] = round(row["per_image_at_defaults_s"] / one, 3)
    return out


def full(model, x, precision="auto"):
    wall, began = time.perf_counter(), time.process_time()
    params = {"critic_precision": precision}
    a = xplain.explain(model, x, method="input-iba", params=params, seed=0)
    return {
        "critic_precision": a.info.get("critic_precision"),
        "wall_s": round(time.perf_counter() - wall, 1),
        "cpu_s": round(time.process_time() - began, 1),
        "stage_cpu_s": a.info["stage_cpu_seconds"],
        "stage_wall_s": a.info["stage_seconds"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("parts", "batches", "full"))
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--gan-epochs", type=int, default=1)
    ap.add_argument("--input-steps", type=int, default=6)
    ap.add_argument("--gan-dataset", type=int, default=0, help="0: the default (200)")
    ap.add_argument("--critic-precision", default="auto", choices=("auto", "float32", "bfloat16"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    model, x = setup()
    if args.what == "parts":
        out = parts(model, x)
    elif args.what == "batches":
        sizes = [int(s) for s in args.batches.split(",")]
        out = batches(
            model,
            x,
            sizes,
            args.gan_epochs,
            args.input_steps,
            args.gan_dataset,
            args.critic_precision,
        )
    else:
        out = full(model, x, args.critic_precision)
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

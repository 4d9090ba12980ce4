#!/usr/bin/env bash
# Opt-in smoke test of the Docker image; NOT part of the pytest suite (it builds an image of
# several GB and runs every model on the CPU: about half an hour on 2 cores).
#
#   tests/docker/smoke.sh
#
# What it checks, in order (each failure stops it with "SMOKE FAIL: ..." and exit 1):
#  1. The Dockerfile builds with the engine's built-in frontend, no `# syntax=` image pulled,
#     on a stand-in base (made by make_base.sh when HERO_SMOKE_BASE is not given).
#  2. --build-arg WEIGHTS_DIR naming a folder that is not in the build context stops the build
#     with a message that says so.
#  3. Checkpoints that fail their published sha256 (the synthetic test weights do) stop the
#     build with what to do; with ALLOW_UNVERIFIED_WEIGHTS=1 they are baked in from
#     WEIGHTS_DIR=weights-smoke (a folder other than weights/).
#  4. launch_container.sh without the NVIDIA runtime stops with exit 2 and says what to
#     install (checked only on a host where docker lists no nvidia runtime).
#  5. The reference README's commands, run through `HERO_FEATURES_GPUS=none
#     launch_container.sh`, give the same files as the same commands on the host, with
#     identical feature arrays, and leave no empty feature folder (clip-vit_features/ for an
#     RN50x4-only run) behind.
#
# Settings (environment):
#   DOCKER              docker client (default: docker). BuildKit is used (DOCKER_BUILDKIT=1).
#   HERO_SMOKE_BASE     base image to build on (default: hero-features-smoke-base:latest, made
#                       by tests/docker/make_base.sh if it does not exist; needs debootstrap)
#   HERO_SMOKE_PYTHON   host python that can import the package's dependencies (default:
#                       python3); the package itself comes from this checkout's src/
#   HERO_SMOKE_WEIGHTS  folder with the five checkpoints (default: $HERO_TEST_CKPTS when it
#                       holds them, else synthetic ones made by tests/tools/make_checkpoints.py)
#   HERO_SMOKE_KEEP=1   keep the work folder (outputs, logs) and the image
set -euo pipefail

repo=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/../.." && pwd -P)
docker=${DOCKER:-docker}
base=${HERO_SMOKE_BASE:-hero-features-smoke-base:latest}
python=${HERO_SMOKE_PYTHON:-python3}
image=hero-features:smoke
export DOCKER_BUILDKIT=1
# docker must be a command (not a path) for launch_container.sh: put its folder first.
case "$docker" in
    */*) PATH="$(dirname -- "$docker"):$PATH"; docker=$(basename -- "$docker") ;;
esac
export PATH

work=$(mktemp -d "${TMPDIR:-/tmp}/hero-smoke.XXXXXX")
weights_name="weights-smoke"  # inside the checkout: the build context
cleanup() {
    rm -rf "${repo:?}/$weights_name"
    if [ "${HERO_SMOKE_KEEP:-0}" = 1 ]; then
        echo "kept: $work (and image $image)" >&2
    else
        rm -rf "$work"
        "$docker" rmi "$image" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

step() { echo "== $*" >&2; }
fail() { echo "SMOKE FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*" >&2; }

# -- 1. base and weights ---------------------------------------------------------------------
if ! "$docker" image inspect "$base" >/dev/null 2>&1; then
    step "making the stand-in base $base"
    DOCKER="$docker" "$repo/tests/docker/make_base.sh" "$base"
fi

checkpoints=(SLOWFAST_8x8_R50.pkl resnet152-394f9c45.pth s3d_howto100m.pth ViT-B-32.pt RN50x4.pt)
weights=${HERO_SMOKE_WEIGHTS:-${HERO_TEST_CKPTS:-}}
for name in "${checkpoints[@]}"; do
    if [ -z "$weights" ] || [ ! -f "$weights/$name" ]; then
        step "making synthetic checkpoints"
        weights="$work/checkpoints"
        PYTHONPATH="$repo/src" "$python" "$repo/tests/tools/make_checkpoints.py" "$weights" >/dev/null
        break
    fi
done
if [ -e "$repo/$weights_name" ]; then
    fail "$repo/$weights_name exists; remove it (the smoke test makes and deletes it)"
fi
mkdir "$repo/$weights_name"
for name in "${checkpoints[@]}"; do  # hard links where possible: 1 GiB not copied
    ln "$weights/$name" "$repo/$weights_name/$name" 2>/dev/null \
        || cp "$weights/$name" "$repo/$weights_name/$name"
done

# -- 2-3. builds -----------------------------------------------------------------------------
if head -n 1 "$repo/Dockerfile" | grep -q '^# *syntax='; then
    fail "the Dockerfile has a '# syntax=' line: an offline build would try to pull it"
fi
build() {  # build LOG ARGS...: docker build of the checkout, plain progress into LOG
    local log=$1
    shift
    nice -n 10 "$docker" build --progress=plain --build-arg "BASE_IMAGE=$base" \
        -t "$image" "$@" "$repo" >"$log" 2>&1
}

step "build with WEIGHTS_DIR=weights-missing (must stop)"
if build "$work/build-missing.log" --build-arg WEIGHTS_DIR=weights-missing; then
    fail "a WEIGHTS_DIR that is not in the build context did not stop the build"
fi
grep -q "WEIGHTS_DIR=weights-missing: no such folder in the build" "$work/build-missing.log" \
    || { tail -30 "$work/build-missing.log" >&2; fail "no WEIGHTS_DIR message; see $work/build-missing.log"; }
pass "missing WEIGHTS_DIR refused"

step "build with WEIGHTS_DIR=$weights_name, synthetic weights (must stop on the hashes)"
if build "$work/build-mismatch.log" --build-arg "WEIGHTS_DIR=$weights_name"; then
    fail "checkpoints failing their published sha256 did not stop the build"
fi
if ! grep -q "HASH MISMATCH" "$work/build-mismatch.log" \
        || ! grep -q "ALLOW_UNVERIFIED_WEIGHTS=1 to bake them in anyway" "$work/build-mismatch.log"
then
    fail "no hash mismatch advice; see $work/build-mismatch.log"
fi
pass "hash mismatch refused, with what to do"

step "build with WEIGHTS_DIR=$weights_name ALLOW_UNVERIFIED_WEIGHTS=1"
build "$work/build.log" --build-arg "WEIGHTS_DIR=$weights_name" \
    --build-arg ALLOW_UNVERIFIED_WEIGHTS=1 \
    || { tail -30 "$work/build.log" >&2; fail "the build failed; see $work/build.log"; }
"$docker" run --rm "$image" sh -c 'cd /models && ls' >"$work/models.txt"
for name in "${checkpoints[@]}"; do
    grep -qx "$name" "$work/models.txt" || fail "$name is not in the image's /models"
done
pass "image built; /models holds all five checkpoints from $weights_name/"

# -- 4-5. runs -------------------------------------------------------------------------------
videos="$work/videos"
mkdir -p "$videos/sub"
cp "$repo"/tests/data/videos/*.mp4 "$videos/"
mv "$videos/carphone_pristine.mp4" "$videos/sub/"

if ! "$docker" info --format '{{json .Runtimes}}' | grep -q nvidia; then
    step "launch_container.sh without an NVIDIA runtime (must stop with exit 2)"
    status=0
    HERO_FEATURES_IMAGE=$image "$repo/launch_container.sh" "$videos" "$work/unused" true \
        </dev/null 2>"$work/no-runtime.txt" || status=$?
    if [ "$status" != 2 ] || ! grep -q "HERO_FEATURES_GPUS=none" "$work/no-runtime.txt"; then
        fail "exit $status, expected 2 and advice; got: $(cat "$work/no-runtime.txt")"
    fi
    pass "missing NVIDIA runtime detected: $(head -n 1 "$work/no-runtime.txt")"
fi

# The reference README's commands, word for word (container paths, gather defaults).
readme_commands='set -e
cd /src/slowfast && python extract_feature/gather_video_paths.py
python extract_feature/extract.py --dataflow --csv /output/csv/slowfast_info.csv --batch_size 45 --num_decoding_thread 4 --clip_len 2 TEST.CHECKPOINT_FILE_PATH /models/SLOWFAST_8x8_R50.pkl
cd /src/resnets && python gather_video_paths.py && python extract.py --csv /output/csv/resnet_info.csv --num_decoding_thread 4 --clip_len 2
cd /src/mil-nce && python gather_video_paths.py && python extract.py --dataflow --csv /output/csv/mil-nce_info.csv --batch_size 45 --num_decoding_thread 4
cd /src/clip && python gather_video_paths.py && python extract.py --csv /output/csv/clip-vit_info.csv --num_decoding_thread 4 --model_version RN50x4
'
step "the README's commands through HERO_FEATURES_GPUS=none launch_container.sh"
HERO_FEATURES_GPUS=none HERO_FEATURES_IMAGE=$image nice -n 10 \
    "$repo/launch_container.sh" "$videos" "$work/out-docker" bash -c "$readme_commands" \
    </dev/null >"$work/run-docker.log" 2>&1 \
    || { tail -30 "$work/run-docker.log" >&2; fail "the container run failed"; }
pass "container run finished"

# The same commands on the host: the gather scripts' defaults written out with host paths.
step "the same commands on the host"
out="$work/out-host"
(
    set -e
    export PYTHONPATH="$repo/src" HERO_FEATURES_WEIGHTS="$weights" CUDA_VISIBLE_DEVICES=""
    export XDG_CACHE_HOME="$work/cache"
    gather() { "$python" "$1" --video_path "$videos/" --feature_path "$out/$2_features" \
                   --csv_folder "$out/csv"; }
    cd "$repo/slowfast" && gather extract_feature/gather_video_paths.py slowfast
    nice -n 10 "$python" extract_feature/extract.py --dataflow --csv "$out/csv/slowfast_info.csv" --batch_size 45 --num_decoding_thread 4 --clip_len 2 TEST.CHECKPOINT_FILE_PATH "$weights/SLOWFAST_8x8_R50.pkl"
    cd "$repo/resnets" && gather gather_video_paths.py resnet
    nice -n 10 "$python" extract.py --csv "$out/csv/resnet_info.csv" --num_decoding_thread 4 --clip_len 2
    cd "$repo/mil-nce" && gather gather_video_paths.py mil-nce
    nice -n 10 "$python" extract.py --dataflow --csv "$out/csv/mil-nce_info.csv" --batch_size 45 --num_decoding_thread 4
    cd "$repo/clip" && gather gather_video_paths.py clip-vit
    nice -n 10 "$python" extract.py --csv "$out/csv/clip-vit_info.csv" --num_decoding_thread 4 --model_version RN50x4
) >"$work/run-host.log" 2>&1 || { tail -30 "$work/run-host.log" >&2; fail "the host run failed"; }
pass "host run finished"

step "comparing"
"$python" - "$work/out-docker" "$out" <<'EOF' || fail "outputs differ (above)"
import sys
from pathlib import Path

import numpy as np

docker, host = map(Path, sys.argv[1:])
def files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.npz"))
problems = []
if files(docker) != files(host):
    problems.append(f"file sets differ: {files(docker)} vs {files(host)}")
for name in files(docker):
    with np.load(docker / name) as a, np.load(host / name) as b:
        x, y = a["features"], b["features"]
        if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
            problems.append(f"{name}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}, "
                            f"max |diff| {np.abs(x.astype(float) - y.astype(float)).max()}")
for root in (docker, host):
    if (root / "failed.jsonl").exists():
        problems.append(f"{root}/failed.jsonl: {(root / 'failed.jsonl').read_text()}")
    for folder in root.iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            problems.append(f"empty folder {folder}")
expected = {"slowfast_features", "resnet_features", "mil-nce_features", "clip-rn50x4_features"}
got = {p.parts[0] for p in files(docker)}
if got != expected:
    problems.append(f"feature folders {sorted(got)}, expected {sorted(expected)}")
print("\n".join(problems) if problems else
      f"{len(files(docker))} feature files, identical arrays in the container and on the host:")
for name in files(docker):
    with np.load(docker / name) as a:
        print(f"  {name}: {a['features'].dtype} {a['features'].shape}")
sys.exit(1 if problems else 0)
EOF
echo "SMOKE PASS" >&2

#!/usr/bin/env bash
# Start the hero-features container with the videos and an output folder mounted.
#
#   launch_container.sh <video_dir> <output_dir> [command ...]
#   source launch_container.sh <video_dir> <output_dir>     (as the reference README has it)
#
# Mounts: this repository at /src (its src/ is put first on PYTHONPATH, so edits apply without
# rebuilding the image), <video_dir> at /video read-only, <output_dir> at /output. The command
# defaults to an interactive bash. CUDA_VISIBLE_DEVICES picks the GPUs (default: all);
# HERO_FEATURES_GPUS=none runs the container without GPUs (on the CPU: pass --device cpu, or
# let hero-features fall back to it); HERO_FEATURES_IMAGE picks the image (default:
# hero-features:latest). The container runs as the calling user so that the features written
# to <output_dir> belong to them.
#
# GPUs need the NVIDIA Container Toolkit on the host. When docker reports no nvidia runtime
# and no toolkit program (nvidia-container-runtime-hook, nvidia-container-cli) is on PATH,
# this stops with exit status 2 and says what to install, instead of docker's "could not
# select device driver" (HERO_FEATURES_SKIP_GPU_CHECK=1 skips the check, e.g. for a remote
# docker host).
#
# Everything runs in a function whose body is a subshell: when the file is sourced, no
# variable, option or function is left behind in the caller's shell, and the status of the
# last command (the docker run, or 2 for a usage error) is what `source` returns.

_hero_features_launch() {
    local status
    (
        set -euo pipefail
        usage="usage: launch_container.sh <video_dir> <output_dir> [command ...]"
        if [ "$#" -lt 2 ] || [ -z "$1" ] || [ -z "$2" ]; then
            echo "$usage" >&2
            exit 2
        fi
        if [ ! -d "$1" ]; then
            echo "launch_container.sh: video folder '$1' does not exist" >&2
            echo "$usage" >&2
            exit 2
        fi
        devices=${CUDA_VISIBLE_DEVICES:-all}
        image=${HERO_FEATURES_IMAGE:-hero-features:latest}
        gpus=${HERO_FEATURES_GPUS:-}

        # The toolkit is there when docker lists its runtime (nvidia-ctk configured it) or its
        # hook/CLI is installed (what `--gpus` calls). If `docker info` itself fails, docker
        # run will say why better than a guess here, so that counts as found.
        nvidia_toolkit_found() {
            local runtimes
            if ! runtimes=$(docker info --format '{{json .Runtimes}}' 2>/dev/null); then
                return 0
            fi
            [[ "$runtimes" == *nvidia* ]] \
                || command -v nvidia-container-runtime-hook >/dev/null 2>&1 \
                || command -v nvidia-container-cli >/dev/null 2>&1
        }

        # docker splits --gpus and --mount values as CSV: "device=1,3" unquoted would mean
        # device 1 plus a count of 3, and a comma in a path would end the field. Each value
        # is therefore one CSV field in double quotes, with inner quotes doubled.
        csv_field() {
            local value=${1//\"/\"\"}
            printf '"%s"' "$value"
        }

        # Before anything is created: a run that cannot start leaves nothing behind.
        if [ "$gpus" = none ]; then
            gpu_flags=()
        else
            if [ -n "$gpus" ]; then
                devices=$gpus
            fi
            if [ "${HERO_FEATURES_SKIP_GPU_CHECK:-0}" != 1 ] && ! nvidia_toolkit_found; then
                {
                    echo "launch_container.sh: docker cannot give this container GPUs: it lists"
                    echo "  no nvidia runtime, and neither nvidia-container-runtime-hook nor"
                    echo "  nvidia-container-cli is on PATH (docker would fail with 'could not"
                    echo "  select device driver \"\" with capabilities: [[gpu]]')."
                    echo "  Install the NVIDIA Container Toolkit (package nvidia-container-toolkit:"
                    echo "  https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html),"
                    echo "  run 'sudo nvidia-ctk runtime configure --runtime=docker' and restart docker;"
                    echo "  or run on the CPU: HERO_FEATURES_GPUS=none launch_container.sh ..."
                } >&2
                exit 2
            fi
            gpu_flags=(--gpus "$(csv_field "device=$devices")"
                       --env "NVIDIA_VISIBLE_DEVICES=$devices")
        fi

        # Created here rather than by docker, which would make it owned by root.
        if ! mkdir -p -- "$2"; then
            echo "launch_container.sh: cannot create output folder '$2'" >&2
            exit 2
        fi
        video_dir=$(cd -- "$1" && pwd -P)
        output_dir=$(cd -- "$2" && pwd -P)
        repo_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]:-$0}")" && pwd -P)
        shift 2

        if [ -t 0 ]; then
            tty_flags=(-it)
        else
            # No terminal: keep stdin open so piped input still reaches the command.
            tty_flags=(-i)
        fi
        if [ "$#" -eq 0 ]; then
            set -- bash
        fi

        exec docker run \
            "${gpu_flags[@]}" \
            --ipc=host --network=host --rm "${tty_flags[@]}" \
            --user "$(id -u):$(id -g)" \
            --mount "type=bind,$(csv_field "src=$repo_dir"),dst=/src" \
            --mount "type=bind,$(csv_field "src=$video_dir"),dst=/video,readonly" \
            --mount "type=bind,$(csv_field "src=$output_dir"),dst=/output" \
            --env PYTHONPATH=/src/src \
            --workdir /src \
            "$image" "$@"
    )
    status=$?
    unset -f _hero_features_launch
    return "$status"
}

_hero_features_launch "$@"

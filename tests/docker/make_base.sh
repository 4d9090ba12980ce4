#!/usr/bin/env bash
# Make a stand-in for the Dockerfile's base image on a machine that cannot reach Docker Hub:
# Debian from debootstrap, `docker import`ed, with a Python venv first on PATH holding torch
# and torchvision (what pytorch/pytorch provides: `python`, `pip`, torch). The host's pip
# setup is reused: its config files and CA bundle are baked in (so the image build's own
# `pip install` reaches the same index), and local wheel folders it names (file:// indexes,
# find-links) are mounted read-only while torch is installed.
#
#   tests/docker/make_base.sh TAG
#
# Needs root (debootstrap), docker and network access to a Debian mirror. Settings:
#   HERO_SMOKE_SUITE   Debian suite (default bookworm: Python 3.11)
#   HERO_SMOKE_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   HERO_SMOKE_TORCH   what to pip install (default "torch==2.14.1 torchvision==0.29.1")
#   HERO_SMOKE_PIP     the host pip whose config is reused (default: pip3 on PATH)
set -euo pipefail

tag=${1:?usage: make_base.sh TAG}
docker=${DOCKER:-docker}
suite=${HERO_SMOKE_SUITE:-bookworm}
mirror=${HERO_SMOKE_MIRROR:-http://deb.debian.org/debian}
read -r -a torch_req <<< "${HERO_SMOKE_TORCH:-torch==2.14.1 torchvision==0.29.1}"
host_pip=${HERO_SMOKE_PIP:-pip3}

work=$(mktemp -d "${TMPDIR:-/tmp}/hero-smoke-base.XXXXXX")
container="hero-smoke-base-$$"
cleanup() {
    "$docker" rm -f "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== debootstrap $suite" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*

# The host's CA bundle replaces Debian's (a TLS-inspecting proxy's CA is only in the host's),
# and its pip config files are copied to the same places.
bundle=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
if [ -f "$bundle" ]; then
    cp "$bundle" "$work/rootfs/etc/ssl/certs/ca-certificates.crt"
fi
for conf in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip" "$HOME/.pip"; do
    if [ -e "$conf" ]; then
        target="$work/rootfs${conf/#$HOME//root}"
        mkdir -p "$(dirname "$target")"
        cp -r "$conf" "$target"
    fi
done

echo "== docker import" >&2
tar -C "$work/rootfs" -c . | "$docker" import - "$tag-rootfs" >/dev/null
rm -rf "$work/rootfs"

# Local folders the host's pip reads wheels from: mounted at the same paths for the install.
# A file:// simple index links to ../files-style neighbours, so its parent is mounted.
mounts=()
while IFS= read -r location; do
    location=${location#file://}
    case "$location" in
        /*/simple|/*/simple/) location=$(dirname "$location") ;;
    esac
    if [ -d "$location" ]; then
        mounts+=(--volume "$location:$location:ro")
    fi
done < <("$host_pip" config list 2>/dev/null \
             | sed -n -E "s/^[^=]*\.(find-links|index-url|extra-index-url)='(.*)'$/\2/p" \
             | tr ' ' '\n'
         printf '%s\n' "${PIP_FIND_LINKS:-}" "${PIP_EXTRA_INDEX_URL:-}" | tr ' ' '\n')
pip_env=()
while IFS='=' read -r name _; do
    pip_env+=(--env "$name")
done < <(env | grep -E '^PIP_[A-Z_]+=' || true)

echo "== pip install ${torch_req[*]} (mounts: ${mounts[*]:-none})" >&2
"$docker" run --name "$container" --network host "${mounts[@]}" "${pip_env[@]}" \
    "$tag-rootfs" /bin/sh -c \
    'python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir --progress-bar off "$@"' \
    sh "${torch_req[@]}"

changes=(--change "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
while IFS= read -r line; do
    changes+=(--change "ENV $line")
done < <(env | grep -E '^PIP_[A-Z_]+=' || true)
"$docker" commit "${changes[@]}" "$container" "$tag" >/dev/null
"$docker" rm "$container" >/dev/null
"$docker" rmi "$tag-rootfs" >/dev/null
echo "== made $tag" >&2

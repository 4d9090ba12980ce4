# One image for all five models (slowfast, mil-nce, resnet, clip-vit, clip-rn50x4), with their
# checkpoints baked into /models under their original file names.
#
#   docker build -t hero-features:latest .                     (Docker >= 23, with buildx)
#   DOCKER_BUILDKIT=1 docker build -t hero-features:latest .   (Docker 18.09 to 22)
#   ./launch_container.sh /path/to/videos /path/to/output
#
# Needs BuildKit for RUN --mount. Docker >= 23 builds with it through the buildx plugin
# (package docker-buildx-plugin, or docker-buildx in Debian/Ubuntu); without that plugin it
# stops with "BuildKit is enabled but the buildx component is missing or broken", and the
# classic builder (DOCKER_BUILDKIT=0) with "the --mount option requires BuildKit". Older
# engines, e.g. Debian 12's docker.io 20.10, have BuildKit built in: set DOCKER_BUILDKIT=1.
# There is no `# syntax=` line on purpose: the engine's built-in Dockerfile frontend has every
# feature used here, so an offline build machine never has to pull a frontend image
# (tests/docker/smoke.sh builds this file with Docker 20.10 and no registry; docs/docker.md).
#
# The MIL-NCE checkpoint's original URL is dead, so it cannot be downloaded here: put
# s3d_howto100m.pth in a `weights/` folder next to this file and the build copies it into
# /models. Another folder can be named with --build-arg WEIGHTS_DIR=DIR, a path relative to
# this folder whose name starts with `weights` (weights-offline/, weights/v2/): .dockerignore
# lets nothing else into the build context, and a WEIGHTS_DIR that is not there stops the
# build. Any of the other checkpoints found there is used instead of being downloaded, so an
# offline build works when all five are present. Without s3d_howto100m.pth the image is still
# built, with a warning, and mil-nce then needs the file mounted at run time (--weights_dir or
# $HERO_FEATURES_WEIGHTS); --build-arg REQUIRE_ALL_WEIGHTS=1 makes that a build error.
#
# Every checkpoint with a published sha256 is checked; a file that fails stops the build with
# what to do. --build-arg ALLOW_UNVERIFIED_WEIGHTS=1 bakes such files in anyway, with a
# warning (for tests with synthetic weights: their features do not match the released ones).

# CUDA 12.6 builds of PyTorch carry kernels for Maxwell through Hopper (sm_50 to sm_90), so
# one image runs on H100/H200 and on older cards alike. For Blackwell cards pass e.g.
# --build-arg BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime.
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.6-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG WEIGHTS_DIR=weights
ARG REQUIRE_ALL_WEIGHTS=0
ARG ALLOW_UNVERIFIED_WEIGHTS=0

LABEL org.opencontainers.image.title="hero-features" \
      org.opencontainers.image.description="HERO/VALUE video features: SlowFast, MIL-NCE S3D, ResNet-152, CLIP ViT-B/32 and RN50x4" \
      org.opencontainers.image.licenses="MIT"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# tcmalloc: `hero-features extract` (and the reference's extract.py scripts) restart under it
# (src/hero_features/allocator.py); on a CPU it runs the 3-D CNNs far faster than glibc's
# malloc (docs/benchmarks.md). The package is libtcmalloc-minimal4t64 from Ubuntu 24.04 on.
# Not pinned: its version differs with BASE_IMAGE's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update \
    && pkg=libtcmalloc-minimal4 \
    && if apt-cache show libtcmalloc-minimal4t64 > /dev/null 2>&1; then pkg=libtcmalloc-minimal4t64; fi \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkg}" \
    && rm -rf /var/lib/apt/lists/*

# PyAV's wheels bundle FFmpeg, so no system ffmpeg is installed. The base image's CUDA build of
# torch (and torchvision, when present) is pinned so that no dependency can swap it for a
# PyPI build. The `pack` extra brings lmdb/msgpack for `hero-features pack`.
RUN --mount=type=bind,target=/tmp/context,rw \
    python -c "import importlib.metadata as md; have = {(d.metadata['Name'] or '').lower(): d.version for d in md.distributions()}; print(''.join(f'{n}=={have[n]}\n' for n in ('torch', 'torchvision') if n in have), end='')" > /tmp/torch-constraints.txt \
    && grep -q '^torch==' /tmp/torch-constraints.txt \
    && pip install --no-cache-dir --constraint /tmp/torch-constraints.txt "/tmp/context[pack]" \
    && rm /tmp/torch-constraints.txt \
    && hero-features --help > /dev/null \
    && LD_PRELOAD="$(python -c 'from hero_features.allocator import find_tcmalloc as f; print(f() or "")')" \
       python -c "from hero_features.allocator import describe; d = describe(); print('allocator', d); assert d.startswith('tcmalloc')" \
    && python -c "import av, torch; print('PyAV', av.__version__, 'FFmpeg', av.library_versions['libavcodec'], 'torch', torch.__version__)"

# The download cache survives rebuilds (BuildKit cache mount), so changing the source does not
# fetch 1.3 GB of checkpoints again; only what was downloaded goes into it, never a file of
# WEIGHTS_DIR (a synthetic or private checkpoint must not turn up in a later build). Every
# file is checked against its published sha256 by `hero-features models` (exit 1 on a
# mismatch) before the image is accepted.
RUN --mount=type=bind,target=/tmp/context \
    --mount=type=cache,target=/root/.cache/hero-features,id=hero-features-weights \
    if [ "${WEIGHTS_DIR}" != weights ] && [ ! -d "/tmp/context/${WEIGHTS_DIR}" ]; then \
         echo "ERROR: --build-arg WEIGHTS_DIR=${WEIGHTS_DIR}: no such folder in the build" \
              "context. It must be a path relative to the Dockerfile's folder whose name" \
              "starts with 'weights' (e.g. weights-offline), as .dockerignore lets only" \
              "those in; or put the checkpoints in weights/ and leave WEIGHTS_DIR out." >&2; \
         exit 1; \
       fi \
    && mkdir -p /models \
    && for f in "/tmp/context/${WEIGHTS_DIR}"/* /root/.cache/hero-features/*; do \
         case "${f}" in \
           *.pth|*.pkl|*.pt) \
             if [ -f "${f}" ] && [ ! -e "/models/${f##*/}" ]; then cp "${f}" /models/; fi ;; \
         esac; \
       done \
    && hero-features download --weights_dir /models --model slowfast,resnet,clip-vit,clip-rn50x4 \
    && if ! hero-features download --weights_dir /models --model mil-nce; then \
         if [ "${REQUIRE_ALL_WEIGHTS}" = 1 ]; then exit 1; fi; \
         echo "WARNING: no s3d_howto100m.pth: put it in ${WEIGHTS_DIR}/ of the build context" \
              "for mil-nce, or mount it at run time" >&2; \
       fi \
    && rm -f /models/*.part /models/*.corrupt /models/*.lock \
    && if ! hero-features models --weights_dir /models; then \
         if [ "${ALLOW_UNVERIFIED_WEIGHTS}" != 1 ]; then \
           echo "ERROR: the checkpoint(s) marked HASH MISMATCH above are not the published" \
                "files, so the image's features would not match the released ones. Replace" \
                "them in ${WEIGHTS_DIR}/ with the published files (or delete them there and" \
                "the build downloads them), or build with --build-arg" \
                "ALLOW_UNVERIFIED_WEIGHTS=1 to bake them in anyway." >&2; \
           exit 1; \
         fi; \
         echo "WARNING: baking in checkpoints that fail their published sha256" \
              "(ALLOW_UNVERIFIED_WEIGHTS=1)" >&2; \
       fi \
    && for f in /models/*; do \
         [ -e "/tmp/context/${WEIGHTS_DIR}/${f##*/}" ] \
           || [ -e "/root/.cache/hero-features/${f##*/}" ] \
           || cp "${f}" /root/.cache/hero-features/; \
       done \
    && chmod 0755 /models \
    && chmod 0644 /models/*

# Any uid may run the image (launch_container.sh passes the caller's), so caches go to /tmp.
# A fixed, numeric id: one the host can resolve in file ownership and that no base image
# (Ubuntu 24.04 has uid 1000) already uses.
RUN groupadd --gid 10001 hero \
    && useradd --no-log-init --create-home --uid 10001 --gid 10001 --shell /bin/bash hero \
    && mkdir -p /src /video /output \
    && chown 10001:10001 /src /output

ENV HERO_FEATURES_WEIGHTS=/models \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /src
VOLUME ["/video", "/output"]

CMD ["hero-features", "--help"]

"""The model registry: model id -> ModelSpec (id, dim, unit, decode size and crop, checkpoint,
L2 flag), importable without torch. Each model's network, loader and preprocessing live in
its family module (slowfast.py, s3d.py, resnet.py, clip.py), imported only when a model is
built. Adding a model is one entry here and one family module.
"""
from __future__ import annotations

from .spec import Checkpoint, Lazy, ModelSpec

_CLIP_URL = "https://openaipublic.azureedge.net/clip/models/{}/{}"
_VIT_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"
_RN50X4_SHA256 = "7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd"

# The README's link (www.rocq.inria.fr/cluster-willow/...) is dead; the maintainer gave the
# ENS address for the same two files in S3D_HowTo100M issue #1; the community re-upload
# (issue #14) is not from the authors. A user without the file is told so, instead of
# "fetch it from URL".
_S3D_URL = "https://www.di.ens.fr/~miech/S3D_howto100m/s3d_howto100m.pth"
_S3D_MISSING_HINT = (
    "No dependable download exists: the authors' original address "
    "(https://www.rocq.inria.fr/cluster-willow/amiech/howto100m/s3d_howto100m.pth) is dead "
    f"and the replacement they named ({_S3D_URL}) cannot be relied on. Get s3d_howto100m.pth "
    "from a copy you trust (a colleague's, the /models of an older HERO image, or the "
    "community re-upload https://drive.google.com/uc?export=download&id="
    "1DN8t1feS0t5hYYTfXQfZd596Pu9yXJIr, not from the authors: check it first)")

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec(
        name="slowfast", dim=2304, unit="clip", size=224, crop=True,
        checkpoint=Checkpoint(
            "SLOWFAST_8x8_R50.pkl",
            "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/kinetics400/"
            "SLOWFAST_8x8_R50.pkl"),
        build=Lazy("slowfast", "load_slowfast"),
        preprocess=Lazy("slowfast", "preprocess_slowfast")),
    ModelSpec(
        name="mil-nce", dim=1024, unit="clip", size=224, crop=True,
        checkpoint=Checkpoint("s3d_howto100m.pth", _S3D_URL, missing_hint=_S3D_MISSING_HINT),
        build=Lazy("s3d", "load_s3d"),
        preprocess=Lazy("s3d", "preprocess_s3d")),
    ModelSpec(
        name="resnet", dim=2048, unit="frame", size=224, crop=False,
        checkpoint=Checkpoint(
            "resnet152-394f9c45.pth", "https://download.pytorch.org/models/resnet152-394f9c45.pth",
            # torchvision publishes the first 8 hex digits of the sha256 in the file name.
            sha256="394f9c45"),
        build=Lazy("resnet", "load_resnet152"),
        preprocess=Lazy("resnet", "preprocess_imagenet"),
        l2_normalize=True),
    ModelSpec(
        name="clip-vit", dim=512, unit="frame", size=224, crop=True,
        checkpoint=Checkpoint("ViT-B-32.pt", _CLIP_URL.format(_VIT_SHA256, "ViT-B-32.pt"),
                              _VIT_SHA256),
        build=Lazy("clip", "load_clip", (("arch", "ViT-B/32"),)),
        preprocess=Lazy("clip", "preprocess_clip")),
    ModelSpec(
        name="clip-rn50x4", dim=640, unit="frame", size=288, crop=True,
        checkpoint=Checkpoint("RN50x4.pt", _CLIP_URL.format(_RN50X4_SHA256, "RN50x4.pt"),
                              _RN50X4_SHA256),
        build=Lazy("clip", "load_clip", (("arch", "RN50x4"),)),
        preprocess=Lazy("clip", "preprocess_clip")),
)}
MODEL_IDS = tuple(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_IDS)}") from None


def feature_dims(models=MODEL_IDS) -> dict[str, int]:
    """model id -> feature width, in the order given."""
    return {name: get_spec(name).dim for name in models}


__all__ = ["Checkpoint", "Lazy", "ModelSpec", "MODEL_IDS", "REGISTRY", "feature_dims", "get_spec"]

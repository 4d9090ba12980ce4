"""OpenAI CLIP image encoders (ViT-B/32 and RN50x4), built by open_clip from OpenAI's weights.

The reference ran `clip.load(...).encode_image`: the projected image embedding, not
L2-normalised. open_clip's `CLIP` with QuickGELU is the same network under the same parameter
names, so OpenAI's files load into it unchanged.

Two file forms are accepted, and neither runs pickled Python:
  * the official TorchScript archives (what OpenAI publishes): read with `torch.jit.load`,
    which only interprets TorchScript, and used for nothing but their `state_dict()`;
  * plain state dicts (e.g. the synthetic test weights): `torch.load(weights_only=True)`.
Both then take the same path: identify the architecture, build it from open_clip's config,
load strictly.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Union

import open_clip
import torch
from open_clip.model import CLIP, convert_weights_to_fp16
from torch import nn

from ..state_dicts import load_state_dict_strict, read_state_dict
from .normalize import image_normalizer

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

# OpenAI's archives carry these hyper-parameters as int tensors next to the weights; they are
# not parameters of the model.
_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass(frozen=True)
class _Arch:
    config: str  # open_clip model config with OpenAI's hyper-parameters
    dim: int
    size: int
    stem_shape: tuple  # visual.conv1.weight: tells the released CLIP models apart

    def describe(self, name: str) -> str:
        return f"{name} ({self.dim}-d, {self.size} px input)"


ARCHS: Dict[str, _Arch] = {
    "ViT-B/32": _Arch("ViT-B-32", 512, 224, (768, 3, 32, 32)),
    "RN50x4": _Arch("RN50x4", 640, 288, (40, 3, 3, 3)),
}


class ClipImageEncoder(nn.Module):
    """`encode_image` of a CLIP model; takes float input and returns float32 (B, dim)."""

    def __init__(self, visual: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.visual = visual
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # clip's encode_image casts the image to the weights' dtype (fp16 on CUDA).
        return self.visual(x.to(self.dtype)).float()


def _identify(sd: Dict[str, torch.Tensor]):
    stem = sd.get("visual.conv1.weight")
    proj = sd.get("text_projection")
    for name, a in ARCHS.items():
        if (stem is not None and tuple(stem.shape) == a.stem_shape
                and proj is not None and proj.shape[-1] == a.dim):
            return name
    return None


def load_clip(path: Path, device: Union[str, torch.device], arch: str) -> nn.Module:
    """Build CLIP `arch` ("ViT-B/32" or "RN50x4") from `path`, strictly, in eval mode.

    Precision follows the reference: on CUDA the network computes in float16 like
    `clip.load(device="cuda")` (conv/linear/attention weights in fp16, LayerNorm in fp32);
    on CPU it computes in float32, as `clip.load(device="cpu")` does. The output is float32
    either way.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown CLIP architecture {arch!r}; expected one of {sorted(ARCHS)}")
    a = ARCHS[arch]
    path = Path(path)
    sd = read_state_dict(path)
    found = _identify(sd)
    if found is not None and found != arch:
        raise ValueError(f"{path} holds CLIP {ARCHS[found].describe(found)} weights, "
                         f"but CLIP {a.describe(arch)} was asked for")
    meta = {k: sd.pop(k) for k in _METADATA_KEYS if k in sd}
    if "input_resolution" in meta and int(meta["input_resolution"]) != a.size:
        raise ValueError(f"{path}: input_resolution {int(meta['input_resolution'])}, "
                         f"CLIP {arch} needs {a.size}")

    device = torch.device(device)
    half = device.type == "cuda"
    # Same construction as open_clip.model.build_model_from_openai_state_dict, but from the
    # expected config instead of one inferred from the file, so a wrong file cannot reshape
    # the model.
    model = CLIP(**open_clip.get_model_config(a.config), quick_gelu=True,
                 cast_dtype=torch.float16 if half else None)
    if half:
        convert_weights_to_fp16(model)
    load_state_dict_strict(model, sd, what=f"CLIP {arch} checkpoint {path}")
    # The text tower was only needed to check the whole file.
    encoder = ClipImageEncoder(model.visual, torch.float16 if half else torch.float32)
    return encoder.to(device).eval()


# The reference normalised with CLIP's mean/std and std + 1e-8 (clip/preprocessing.py).
preprocess_clip = image_normalizer(MEAN, STD)


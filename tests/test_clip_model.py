"""CLIP image encoders: strict loading of both file forms, refusal of foreign files."""
from __future__ import annotations

import os

import open_clip
import pytest
import torch
from open_clip.model import CLIP

from hero_features.models import get_spec
from hero_features.models.clip import MEAN, STD, load_clip, preprocess_clip

METADATA = ("input_resolution", "context_length", "vocab_size")
VIT_SPEC, RN50X4_SPEC = get_spec("clip-vit"), get_spec("clip-rn50x4")


def _image(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(size)
    return preprocess_clip(torch.randint(0, 256, (1, size, size, 3), dtype=torch.uint8,
                                         generator=g))


@pytest.fixture(scope="module")
def vit_state_dict(synthetic_checkpoints):
    return torch.load(synthetic_checkpoints / "ViT-B-32.pt", map_location="cpu",
                      weights_only=True)


@pytest.fixture(scope="module")
def vit(synthetic_checkpoints):
    return VIT_SPEC.build(synthetic_checkpoints / "ViT-B-32.pt", torch.device("cpu"))


def test_vit_state_dict_loads(vit):
    with torch.no_grad():
        y = vit(_image(224))
    assert y.shape == (1, 512) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert not vit.training


def test_rn50x4_state_dict_loads(synthetic_checkpoints):
    model = RN50X4_SPEC.build(synthetic_checkpoints / "RN50x4.pt", torch.device("cpu"))
    with torch.no_grad():
        y = model(_image(288))
    assert y.shape == (1, 640) and y.dtype == torch.float32 and torch.isfinite(y).all()


def test_specs_match_reference():
    assert (VIT_SPEC.dim, VIT_SPEC.size, VIT_SPEC.crop, VIT_SPEC.unit) == (512, 224, True, "frame")
    assert (RN50X4_SPEC.dim, RN50X4_SPEC.size) == (640, 288)
    for spec in (VIT_SPEC, RN50X4_SPEC):
        ck = spec.checkpoint
        assert ck.url.endswith(f"/{ck.sha256}/{ck.filename}")
        assert not spec.l2_normalize
        assert spec.build.resolve() is load_clip and spec.preprocess.resolve() is preprocess_clip


def test_damaged_state_dict_is_refused(tmp_path, vit_state_dict):
    sd = dict(vit_state_dict)
    del sd["visual.ln_post.bias"]
    sd["visual.extra.weight"] = torch.zeros(3)
    sd["visual.ln_pre.bias"] = torch.zeros(767, dtype=torch.float16)
    path = tmp_path / "ViT-B-32.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match="CLIP ViT-B/32 checkpoint .* does not fit") as e:
        load_clip(path, "cpu", "ViT-B/32")
    for problem in (str(path), "missing keys: visual.ln_post.bias",
                    "unexpected keys: visual.extra.weight",
                    "shape mismatch: visual.ln_pre.bias checkpoint (767,) != model (768,)"):
        assert problem in str(e.value)


@pytest.mark.parametrize("filename, arch, found", [
    ("RN50x4.pt", "ViT-B/32", "RN50x4"),
    ("ViT-B-32.pt", "RN50x4", "ViT-B/32"),
])
def test_wrong_architecture_is_refused(synthetic_checkpoints, filename, arch, found):
    with pytest.raises(ValueError, match=f"holds CLIP {found} .* but CLIP {arch}"):
        load_clip(synthetic_checkpoints / filename, "cpu", arch)


def test_unknown_architecture_is_refused(synthetic_checkpoints):
    with pytest.raises(ValueError, match="unknown CLIP architecture"):
        load_clip(synthetic_checkpoints / "ViT-B-32.pt", "cpu", "ViT-L/14")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickled_code_is_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ViT-B-32.pt"
    torch.save({"visual.proj": _Exploit(marker)}, path)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_clip(path, "cpu", "ViT-B/32")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_torchscript_archive_loads_like_state_dict(tmp_path, vit_state_dict, vit, monkeypatch):
    sd = dict(vit_state_dict)
    meta = {k: sd.pop(k) for k in METADATA}
    clip = CLIP(**open_clip.get_model_config("ViT-B-32"), quick_gelu=True).eval()
    clip.load_state_dict(sd)
    # Shaped like OpenAI's archives: their text mask is a traced constant, not a buffer, and
    # their hyper-parameters are int tensors in the state dict.
    del clip.attn_mask
    for k, v in meta.items():
        if hasattr(clip, k):
            delattr(clip, k)
        clip.register_buffer(k, v)
    with torch.no_grad():
        traced = torch.jit.trace_module(clip, {"encode_image": (torch.zeros(1, 3, 224, 224),)},
                                        check_trace=False)
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(traced.half(), str(path))
    del clip, traced

    jit_loads = []
    real_load = torch.jit.load
    monkeypatch.setattr(torch.jit, "load",
                        lambda *a, **kw: jit_loads.append(a) or real_load(*a, **kw))
    from_archive = load_clip(path, "cpu", "ViT-B/32")
    assert jit_loads
    x = _image(224)
    with torch.no_grad():
        torch.testing.assert_close(from_archive(x), vit(x), rtol=0, atol=0)


def test_preprocess_matches_reference_formula():
    x = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    y = preprocess_clip(x)
    assert y.shape == (2, 3, 5, 7) and y.dtype == torch.float32 and y.is_contiguous()
    for c in range(3):
        want = (x[..., c].float() / 255 - MEAN[c]) / (STD[c] + 1e-8)
        torch.testing.assert_close(y[:, c], want, rtol=0, atol=1e-6)

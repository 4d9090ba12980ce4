"""SlowFast R50 8x8 (Kinetics-400) as the HERO reference runs it (docs/fidelity.md 2, 3.5-3.6).

Module and parameter names follow PySlowFast's state dict, so its `.pyth` checkpoints load
as they are and Caffe2 blobs need only a name conversion. The output is the reference's
2304-d feature: global averages of the res5 slow and fast tensors, before the classifier.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..safe_pickle import load_caffe2_pickle
from ..state_dicts import is_bn_counter, list_names, load_state_dict_strict, read_state_dict

# The reference took trunc(linspace(0, 31, 8)) from torch <= 1.5, which ends on 30 where
# newer torch gives 31; the released features use these frames.
SLOWFAST_INDICES = (0, 4, 8, 13, 17, 22, 26, 30)

NUM_FRAMES = 32
FEATURE_DIM = 2048 + 256
_ALPHA = 4  # slow/fast frame-rate ratio: the stride of the fusion conv
_BETA_INV = 8  # fast pathway channels = slow / 8
_BLOCKS = (3, 4, 6, 3)  # res2..res5 of a ResNet-50
_SLOW_OUT = (256, 512, 1024, 2048)
_SLOW_TEMPORAL = (1, 1, 3, 3)  # temporal kernel of each block's first conv, res2..res5
_FAST_TEMPORAL = 3
_SPATIAL_STRIDES = (1, 2, 2, 2)


def _conv(c_in: int, c_out: int, kernel, stride=1, padding=0) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, kernel, stride, padding, bias=False)


def _bn(c: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(c, eps=1e-5)


def _stem(c_out: int, t_kernel: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=_conv(3, c_out, (t_kernel, 7, 7), (1, 2, 2), (t_kernel // 2, 3, 3)),
        bn=_bn(c_out),
        relu=nn.ReLU(inplace=True),
        pool_layer=nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ))


def _fuse(c_fast: int) -> nn.Sequential:
    """Fast -> slow lateral connection; its output is concatenated after the slow channels."""
    return nn.Sequential(OrderedDict(
        conv_f2s=_conv(c_fast, 2 * c_fast, (7, 1, 1), (_ALPHA, 1, 1), (3, 0, 0)),
        bn=_bn(2 * c_fast),
        relu=nn.ReLU(inplace=True),
    ))


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_kernel: int, stride: int):
        super().__init__()
        inner = c_out // 4
        self.project = c_in != c_out or stride != 1
        if self.project:
            self.branch1 = _conv(c_in, c_out, 1, (1, stride, stride))
            self.branch1_bn = _bn(c_out)
        self.branch2 = nn.Sequential(OrderedDict(
            a=_conv(c_in, inner, (t_kernel, 1, 1), 1, (t_kernel // 2, 0, 0)),
            a_bn=_bn(inner),
            a_relu=nn.ReLU(inplace=True),
            b=_conv(inner, inner, (1, 3, 3), (1, stride, stride), (0, 1, 1)),
            b_bn=_bn(inner),
            b_relu=nn.ReLU(inplace=True),
            c=_conv(inner, c_out, 1),
            c_bn=_bn(c_out),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.branch1_bn(self.branch1(x)) if self.project else x
        return F.relu(shortcut + self.branch2(x))


class SlowFastR50(nn.Module):
    """Input: normalised fast-pathway clip (B, 3, 32, H, W); output (B, 2304) features.

    `head.projection` (the Kinetics classifier) only exists so that checkpoints load
    completely; forward never applies it.
    """

    def __init__(self, num_classes: int = 400):
        super().__init__()
        self.s1 = nn.ModuleDict({"pathway0_stem": _stem(64, 1),
                                 "pathway1_stem": _stem(64 // _BETA_INV, 5)})
        self.s1_fuse = _fuse(64 // _BETA_INV)
        slow_in, fast_in = 64 + 2 * 64 // _BETA_INV, 64 // _BETA_INV
        for stage, (n, slow_out, t_slow, stride) in enumerate(
                zip(_BLOCKS, _SLOW_OUT, _SLOW_TEMPORAL, _SPATIAL_STRIDES), start=2):
            fast_out = slow_out // _BETA_INV
            blocks = {}
            for p, (c_in, c_out, t) in enumerate(((slow_in, slow_out, t_slow),
                                                 (fast_in, fast_out, _FAST_TEMPORAL))):
                for b in range(n):
                    blocks[f"pathway{p}_res{b}"] = _Bottleneck(
                        c_in if b == 0 else c_out, c_out, t, stride if b == 0 else 1)
            setattr(self, f"s{stage}", nn.ModuleDict(blocks))
            if stage < 5:
                setattr(self, f"s{stage}_fuse", _fuse(fast_out))
            slow_in, fast_in = slow_out + 2 * fast_out, fast_out
        self.head = nn.ModuleDict({"projection": nn.Linear(FEATURE_DIM, num_classes)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[2] != NUM_FRAMES:
            raise ValueError(f"expected (B, 3, {NUM_FRAMES}, H, W), got {tuple(x.shape)}")
        index = torch.tensor(SLOWFAST_INDICES, device=x.device)
        slow = self.s1.pathway0_stem(x.index_select(2, index))
        fast = self.s1.pathway1_stem(x)
        slow = torch.cat([slow, self.s1_fuse(fast)], 1)
        # the reference's pooling after res2 is a 1x1x1 max pool, i.e. nothing
        for stage, n in enumerate(_BLOCKS, start=2):
            blocks = getattr(self, f"s{stage}")
            for b in range(n):
                slow = blocks[f"pathway0_res{b}"](slow)
                fast = blocks[f"pathway1_res{b}"](fast)
            if stage < 5:
                slow = torch.cat([slow, getattr(self, f"s{stage}_fuse")(fast)], 1)
        return torch.cat([slow.mean((2, 3, 4)), fast.mean((2, 3, 4))], 1)


# ------------------------------------------------------------------------------------------
# Checkpoint loading

_BN_SUFFIX = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_PARAM_SUFFIX = {"w": "weight", "b": "bias"}
_BN = r"(?P<bn>s|b|rm|riv)"


def _pathway(m: re.Match) -> str:
    return "pathway1" if m["fast"] else "pathway0"


# Caffe2 blob name -> PySlowFast key, one anchored pattern per blob family; the fast pathway
# is the same name behind "t_". First match wins, so the fusion blobs (which also look like
# branch2c blobs) come first.
_CAFFE2_RULES: list[tuple[re.Pattern, Callable[[re.Match], str]]] = [
    (re.compile(r"pred_(?P<p>w|b)"),
     lambda m: f"head.projection.{_PARAM_SUFFIX[m['p']]}"),
    (re.compile(r"t_pool1_subsample_w"),
     lambda m: "s1_fuse.conv_f2s.weight"),
    (re.compile(rf"t_pool1_subsample_bn_{_BN}"),
     lambda m: f"s1_fuse.bn.{_BN_SUFFIX[m['bn']]}"),
    # the block index is dropped: a stage has one fusion, after its last block
    (re.compile(r"t_res(?P<s>\d)_\d+_branch2c_bn_subsample_w"),
     lambda m: f"s{m['s']}_fuse.conv_f2s.weight"),
    (re.compile(rf"t_res(?P<s>\d)_\d+_branch2c_bn_subsample_bn_{_BN}"),
     lambda m: f"s{m['s']}_fuse.bn.{_BN_SUFFIX[m['bn']]}"),
    (re.compile(r"(?P<fast>t_)?conv1_w"),
     lambda m: f"s1.{_pathway(m)}_stem.conv.weight"),
    (re.compile(rf"(?P<fast>t_)?res_conv1_bn_{_BN}"),
     lambda m: f"s1.{_pathway(m)}_stem.bn.{_BN_SUFFIX[m['bn']]}"),
    (re.compile(r"(?P<fast>t_)?res(?P<s>\d)_(?P<b>\d+)_branch1_w"),
     lambda m: f"s{m['s']}.{_pathway(m)}_res{m['b']}.branch1.weight"),
    (re.compile(rf"(?P<fast>t_)?res(?P<s>\d)_(?P<b>\d+)_branch1_bn_{_BN}"),
     lambda m: f"s{m['s']}.{_pathway(m)}_res{m['b']}.branch1_bn.{_BN_SUFFIX[m['bn']]}"),
    (re.compile(r"(?P<fast>t_)?res(?P<s>\d)_(?P<b>\d+)_branch2(?P<c>[abc])_w"),
     lambda m: f"s{m['s']}.{_pathway(m)}_res{m['b']}.branch2.{m['c']}.weight"),
    (re.compile(rf"(?P<fast>t_)?res(?P<s>\d)_(?P<b>\d+)_branch2(?P<c>[abc])_bn_{_BN}"),
     lambda m: f"s{m['s']}.{_pathway(m)}_res{m['b']}.branch2.{m['c']}_bn.{_BN_SUFFIX[m['bn']]}"),
]
# Caffe2 training snapshots also hold solver state, which the reference skips by these words.
_SOLVER_WORDS = ("momentum", "lr", "model_iter")


def caffe2_key(blob: str) -> str | None:
    """PySlowFast state-dict key of a Caffe2 blob name, or None if it is not a model blob."""
    for pattern, key in _CAFFE2_RULES:
        m = pattern.fullmatch(blob)
        if m:
            return key(m)
    return None


def convert_caffe2_blobs(blobs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Rename Caffe2 blobs to PySlowFast keys; unknown non-solver blobs are an error."""
    state: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unknown = []
    for name, value in blobs.items():
        key = caffe2_key(name)
        if key is None:
            if not any(word in name for word in _SOLVER_WORDS):
                unknown.append(name)
            continue
        if key in state:
            raise ValueError(f"Caffe2 blobs {source[key]!r} and {name!r} both map to {key!r}")
        state[key] = torch.from_numpy(np.ascontiguousarray(value))
        source[key] = name
    if unknown:
        raise ValueError(f"Caffe2 checkpoint has blobs that are not part of SlowFast R50: "
                         f"{list_names(unknown)}")
    return state


def _optional(key: str) -> bool:
    # the classifier is not part of the feature, so a checkpoint without it still serves
    return is_bn_counter(key) or key.startswith("head.projection.")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".pkl":
        ckpt = load_caffe2_pickle(path)
        if "blobs" not in ckpt:
            raise ValueError(f"{path}: a Caffe2 checkpoint holds a 'blobs' dict; keys are {list(ckpt)}")
        return convert_caffe2_blobs(ckpt["blobs"])
    # PySlowFast's .pyth wraps the weights with optimizer state and the epoch: unwrapped there
    return read_state_dict(path)


def load_slowfast(path: Path, device: torch.device | str = "cpu") -> SlowFastR50:
    """SlowFastR50 from a Caffe2 `.pkl` or PySlowFast `.pyth`/`.pth`: float32, eval mode."""
    path = Path(path)
    state = _read_state(path)
    classifier = state.get("head.projection.weight")
    model = SlowFastR50(num_classes=classifier.shape[0] if classifier is not None else 400)
    load_state_dict_strict(model, state, what=f"SlowFast R50 checkpoint {path}",
                           optional=_optional)
    return model.float().to(device).eval()


def preprocess_slowfast(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 32, H, W, 3) -> normalised float32 (B, 3, 32, H, W), as extract.py does."""
    x = x.float().permute(0, 4, 1, 2, 3) / 255.0
    # float32 std + 1e-8 as a tensor like the reference's Normalize: a CPU-scalar divisor
    # would let CUDA multiply by its reciprocal instead of dividing
    std = torch.full((1, 3, 1, 1, 1), 0.225, device=x.device) + 1e-8
    return (x - 0.45) / std


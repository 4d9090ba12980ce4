"""MIL-NCE S3D-G (HowTo100M), the video half of antoine77340/S3D_HowTo100M.

Parameter names follow `s3d_howto100m.pth` exactly so the original file loads as is. The
feature is the global average of `mixed_5c` (1024-d); `fc` is kept only because the file has it.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..state_dicts import is_bn_counter, load_state_dict_strict, read_state_dict

IGNORED_PREFIX = "text_module."  # the sentence encoder, not needed for video features


class STConv3d(nn.Module):
    """Conv + BN + ReLU; `separable` splits a t x k x k kernel into 1 x k x k then t x 1 x 1."""

    def __init__(self, cin: int, cout: int, kernel, padding=0, separable: bool = False):
        super().__init__()
        self.separable = separable
        t, h, w = kernel
        p = padding
        if separable:
            self.conv1 = nn.Conv3d(cin, cout, (1, h, w), padding=(0, p, p), bias=False)
            self.bn1 = nn.BatchNorm3d(cout)
            self.conv2 = nn.Conv3d(cout, cout, (t, 1, 1), padding=(p, 0, 0), bias=False)
            self.bn2 = nn.BatchNorm3d(cout)
        else:
            self.conv1 = nn.Conv3d(cin, cout, kernel, padding=padding, bias=False)
            self.bn1 = nn.BatchNorm3d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.separable:
            x = F.relu(self.bn2(self.conv2(x)))
        return x


class SelfGating(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc(x.mean(dim=(2, 3, 4))))
        return x * weights[:, :, None, None, None]


class Inception(nn.Module):
    def __init__(self, cin: int, b0: int, b1a: int, b1b: int, b2a: int, b2b: int, b3: int):
        super().__init__()
        self.conv_b0 = STConv3d(cin, b0, (1, 1, 1))
        self.conv_b1_a = STConv3d(cin, b1a, (1, 1, 1))
        self.conv_b1_b = STConv3d(b1a, b1b, (3, 3, 3), padding=1, separable=True)
        self.conv_b2_a = STConv3d(cin, b2a, (1, 1, 1))
        self.conv_b2_b = STConv3d(b2a, b2b, (3, 3, 3), padding=1, separable=True)
        self.conv_b3_b = STConv3d(cin, b3, (1, 1, 1))
        self.gating_b0 = SelfGating(b0)
        self.gating_b1 = SelfGating(b1b)
        self.gating_b2 = SelfGating(b2b)
        self.gating_b3 = SelfGating(b3)
        self.out_dim = b0 + b1b + b2b + b3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b0 = self.conv_b0(x)
        b1 = self.conv_b1_b(self.conv_b1_a(x))
        b2 = self.conv_b2_b(self.conv_b2_a(x))
        b3 = self.conv_b3_b(F.max_pool3d(x, 3, stride=1, padding=1))
        return torch.cat([self.gating_b0(b0), self.gating_b1(b1),
                          self.gating_b2(b2), self.gating_b3(b3)], dim=1)


def tf_same_max_pool(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """TensorFlow 'SAME' max pooling the way the port emulates it: ZERO padding (not -inf),
    the extra pixel at the end, then ceil mode. Inputs here are >= 0, but zeros are what the
    reference used, so keep them."""
    pads = []
    for k, s in zip(reversed(kernel), reversed(stride)):  # F.pad wants W, H, T
        along = max(k - s, 0)
        pads += [along // 2, along - along // 2]
    return F.max_pool3d(F.pad(x, pads), kernel, stride, ceil_mode=True)


def space_to_depth(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, 8C, T/2, H/2, W/2); the new channel is ((dt*2 + dh)*2 + dw)*C + c,
    the order the pretrained conv1 weights expect."""
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // 2, 2, h // 2, 2, w // 2, 2)
    x = x.permute(0, 3, 5, 7, 1, 2, 4, 6)
    return x.reshape(b, 8 * c, t // 2, h // 2, w // 2)


class S3DG(nn.Module):
    """S3D-G with the space-to-depth stem of the TPU-trained MIL-NCE model."""

    def __init__(self, embedding_dim: int = 512):
        super().__init__()
        self.conv1 = STConv3d(24, 64, (2, 4, 4), padding=(1, 2, 2))
        self.conv_2b = STConv3d(64, 64, (1, 1, 1))
        self.conv_2c = STConv3d(64, 192, (3, 3, 3), padding=1, separable=True)
        self.gating = SelfGating(192)
        self.mixed_3b = Inception(192, 64, 96, 128, 16, 32, 32)
        self.mixed_3c = Inception(self.mixed_3b.out_dim, 128, 128, 192, 32, 96, 64)
        self.mixed_4b = Inception(self.mixed_3c.out_dim, 192, 96, 208, 16, 48, 64)
        self.mixed_4c = Inception(self.mixed_4b.out_dim, 160, 112, 224, 24, 64, 64)
        self.mixed_4d = Inception(self.mixed_4c.out_dim, 128, 128, 256, 24, 64, 64)
        self.mixed_4e = Inception(self.mixed_4d.out_dim, 112, 144, 288, 32, 64, 64)
        self.mixed_4f = Inception(self.mixed_4e.out_dim, 256, 160, 320, 32, 128, 128)
        self.mixed_5b = Inception(self.mixed_4f.out_dim, 256, 160, 320, 32, 128, 128)
        self.mixed_5c = Inception(self.mixed_5b.out_dim, 384, 192, 384, 48, 128, 128)
        # The text-video embedding head: part of the checkpoint, unused for features.
        self.fc = nn.Linear(self.mixed_5c.out_dim, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) RGB in [0, 1], T/H/W even -> (B, 1024) pooled mixed_5c."""
        x = self.conv1(space_to_depth(x))
        # conv1 pads 1 more than TF 'SAME' needs on the leading side; the port drops it.
        x = x[:, :, 1:, 1:, 1:]
        x = tf_same_max_pool(x, (1, 3, 3), (1, 2, 2))
        x = self.gating(self.conv_2c(self.conv_2b(x)))
        x = tf_same_max_pool(x, (1, 3, 3), (1, 2, 2))
        x = self.mixed_3c(self.mixed_3b(x))
        x = tf_same_max_pool(x, (3, 3, 3), (2, 2, 2))
        for block in (self.mixed_4b, self.mixed_4c, self.mixed_4d, self.mixed_4e, self.mixed_4f):
            x = block(x)
        x = tf_same_max_pool(x, (2, 2, 2), (2, 2, 2))
        x = self.mixed_5c(self.mixed_5b(x))
        return x.mean(dim=(2, 3, 4))


def load_s3d(path: Path, device) -> S3DG:
    state = read_state_dict(path)
    model = S3DG()
    # Strictly: the reference loaded with strict=False, so a wrong file ran on random weights
    # unnoticed.
    load_state_dict_strict(model, state, what=f"MIL-NCE S3D-G checkpoint {path}",
                           ignore_prefixes=(IGNORED_PREFIX,), optional=is_bn_counter)
    return model.float().eval().to(device)


def preprocess_s3d(x_uint8: torch.Tensor) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B, 3, T, H, W) float32 in [0, 1]; MIL-NCE uses no mean/std."""
    return x_uint8.permute(0, 4, 1, 2, 3).contiguous().float().div_(255)


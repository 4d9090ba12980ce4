"""ImageNet ResNet-152 (torchvision IMAGENET1K_V1), global-average of layer4: 2048-d per frame."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet152

from ..state_dicts import is_bn_counter, load_state_dict_strict, read_state_dict
from .normalize import image_normalizer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResNet152Trunk(nn.Module):
    """torchvision's ResNet-152 without avgpool/fc; the mean over H and W replaces avgpool so
    non-square frames (e.g. 224x398, a 7x13 layer4 map) are averaged as the reference did."""

    def __init__(self) -> None:
        super().__init__()
        full = resnet152(weights=None)
        self.body = nn.Sequential(*list(full.children())[:-2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))


def load_resnet152(path: Path, device: torch.device) -> ResNet152Trunk:
    state = read_state_dict(path)
    reference = resnet152(weights=None)
    # The official file carries the fc classifier too; check it like everything else, then
    # keep only the trunk.
    load_state_dict_strict(reference, state, what=f"ResNet-152 checkpoint {path}",
                           optional=is_bn_counter)
    model = ResNet152Trunk()
    model.body.load_state_dict(nn.Sequential(*list(reference.children())[:-2]).state_dict())
    return model.eval().to(device)


preprocess_imagenet = image_normalizer(IMAGENET_MEAN, IMAGENET_STD)

"""Extractor's batch buffers: units land in order whatever the chunking, a long run reuses
one buffer per shape, and the kept buffers are bounded per model."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from hero_features.models.base import Checkpoint, ModelSpec
from hero_features.outputs import FailureLog, Summary
from hero_features.pipeline import SPARE_SHAPES_PER_MODEL, Extractor, Job, _VideoState
from hero_features.producer import Settings


class _FirstPixel(torch.nn.Module):
    """Feature = the first pixel of the unit, so every row says which unit it came from."""

    def forward(self, x):
        return x[:, :, 0, 0].float()


def _spec(name: str) -> ModelSpec:
    return ModelSpec(name=name, dim=3, unit="frame", size=4, crop=False,
                     checkpoint=Checkpoint(f"{name}.pth", "http://unused"),
                     build=lambda path, device: _FirstPixel(),
                     preprocess=lambda x: x.permute(0, 3, 1, 2))


def _extractor(tmp_path: Path, batch_size: int, names=("a",)) -> Extractor:
    specs = [_spec(n) for n in names]
    return Extractor(specs, {n: _FirstPixel() for n in names}, torch.device("cpu"),
                     Settings(clip_len=Fraction(2)), batch_size, FailureLog(tmp_path),
                     Summary(), progress=False)


def _frames(first: int, count: int, width: int = 4) -> np.ndarray:
    frames = np.zeros((count, 4, width, 3), np.uint8)
    frames[:, 0, 0, :] = np.arange(first, first + count)[:, None]
    return frames


def test_chunks_split_across_batches_come_back_in_order_and_reuse_one_buffer(tmp_path):
    extractor = _extractor(tmp_path, batch_size=5)
    extractor._videos[0] = _VideoState(Job(tmp_path / "v.mp4", {"a": tmp_path / "v.npz"}))
    buffers = []
    forward = extractor._forward
    extractor._forward = lambda model, batch: (buffers.append(batch.buffer),
                                               forward(model, batch))
    sent = 0
    for count in (3, 7, 1, 16, 2, 4):  # chunks that straddle batch boundaries
        source = _frames(sent, count)
        extractor._queue_units(0, "a", source)
        source[:] = 255  # the caller may reuse its array at once (a shared-memory slot)
        sent += count
    extractor._flush()
    table = extractor._videos[0].rows["a"]
    assert [int(table[i][0]) for i in range(sent)] == list(range(sent))
    # Holding every buffer keeps a freed one from coming back at the same address.
    assert len(buffers) == -(-sent // 5) and all(b is buffers[0] for b in buffers)


def test_kept_buffers_are_bounded_per_model(tmp_path):
    extractor = _extractor(tmp_path, batch_size=2, names=("a", "b"))
    extractor._videos[0] = _VideoState(Job(tmp_path / "v.mp4", {"a": tmp_path / "a.npz",
                                                                 "b": tmp_path / "b.npz"}))
    extractor._queue_units(0, "b", _frames(0, 2, width=4))
    for width in range(5, 5 + SPARE_SHAPES_PER_MODEL + 3):  # many frame sizes for "a"
        extractor._queue_units(0, "a", _frames(0, 2, width=width))
    kept = {}
    for model, shape in extractor._spare:
        kept.setdefault(model, []).append(shape[1])
    assert kept["b"] == [4]  # not pushed out by the other model's sizes
    assert kept["a"] == list(range(5 + 3, 5 + SPARE_SHAPES_PER_MODEL + 3))  # most recent

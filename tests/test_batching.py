"""The core's batches: units land in order whatever the chunking, every batch has the fixed
shape (a partial one padded with zeros, its padding never handed out), a long run reuses one
buffer per shape, and the kept buffers are bounded per model. Through the public seams:
Batcher, DeviceRunner and Pipeline with a stand-in model."""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from hero_features.batcher import SPARE_SHAPES_PER_MODEL, Batcher
from hero_features.config import InputGroup, Job
from hero_features.device_runner import DeviceRunner
from hero_features.messages import Done, End, Units
from hero_features.models import Checkpoint, ModelSpec
from hero_features.pipeline import Pipeline
from hero_features.swsplan import DeviceGeometry


class _FirstPixel(torch.nn.Module):
    """Feature = the first pixel of the unit, so every row says which unit it came from."""

    def forward(self, x):
        return x[:, :, 0, 0].float()


def _spec(name: str) -> ModelSpec:
    return ModelSpec(name=name, dim=3, unit="frame", size=4, crop=False,
                     checkpoint=Checkpoint(f"{name}.pth", "http://unused"),
                     build=lambda path, device: _FirstPixel(),
                     preprocess=lambda x: x.permute(0, 3, 1, 2))


def _runner(names=("a",)) -> DeviceRunner:
    return DeviceRunner({n: _spec(n) for n in names}, {n: _FirstPixel() for n in names},
                        torch.device("cpu"))


def _frames(first: int, count: int, width: int = 4) -> np.ndarray:
    frames = np.zeros((count, 4, width, 3), np.uint8)
    frames[:, 0, 0, :] = np.arange(first, first + count)[:, None]
    return frames


def test_chunks_split_across_batches_come_back_in_order_in_fixed_shapes(tmp_path):
    runner = _runner()
    pipeline = Pipeline(runner, [InputGroup(("a",), "frame", 4, False)], batch_size=5,
                        clip_len=Fraction(2))
    video_id, _, active = pipeline.add("v", Job(tmp_path / "v.mp4", {"a": tmp_path / "v.npz"}))
    assert active == (0,)
    launched = []
    launch = runner.launch
    runner.launch = lambda batch: (launched.append((batch.buffer, batch.fill,
                                                    batch.buffer.clone())), launch(batch))[1]
    sent, finished = 0, []
    for count in (3, 7, 1, 16, 2, 4):  # chunks that straddle batch boundaries
        source = _frames(sent + 1, count)  # first pixels 1.., so zero padding shows
        finished += pipeline.feed(Units(video_id, 0, source))
        source[:] = 255  # the caller may reuse its array at once (a shared-memory slot)
        sent += count
    finished += pipeline.feed(End(video_id, 2.0))
    finished += pipeline.feed(Done(video_id))
    assert finished == []  # the last partial batch is still open
    finished += pipeline.flush()
    (key, result), = finished
    assert key == "v" and result.ok and result.rows == {"a": sent}
    assert [int(row[0]) for row in result.features["a"]] == list(range(1, sent + 1))
    # Every batch has the shape (5, ...); the last one, 3 units, is padded with zeros.
    assert len(launched) == -(-sent // 5)
    assert all(tuple(copy.shape) == (5, 4, 4, 3) for _, _, copy in launched)
    _, fill, copy = launched[-1]
    assert fill == sent % 5 and not copy[fill:].any()
    # Holding every buffer keeps a freed one from coming back at the same address.
    assert all(buffer is launched[0][0] for buffer, _, _ in launched)


def test_padding_is_zeroed_in_a_reused_buffer():
    batcher = Batcher(batch_size=4)
    full, = batcher.add("a", "x", 0, _frames(1, 4))
    batcher.give_back(full)
    assert list(batcher.add("a", "y", 0, _frames(9, 1))) == []
    partial, = batcher.flush()
    assert partial.buffer is full.buffer and partial.fill == 1
    assert int(partial.buffer[0, 0, 0, 0]) == 9 and not partial.buffer[1:].any()
    assert [(owner, start, count) for owner, start, count, _ in partial.split(None)] == \
        [("y", 0, 1)]


def test_packed_units_of_other_geometries_never_share_a_batch():
    """--scale-on device: two videos' packed YUV units can have one shape but other geometries
    (e.g. 320x240 and 240x320); the device converts a batch with one geometry."""
    landscape = DeviceGeometry(320, 240, "yuv420p", 0, 2, 0, 298, 224)
    portrait = DeviceGeometry(240, 320, "yuv420p", 0, 2, 0, 224, 298)
    packed = np.zeros((1, landscape.packed_size), np.uint8)
    assert packed.shape[1] == portrait.packed_size
    batcher = Batcher(batch_size=2)
    assert list(batcher.add("a", "x", 0, packed, landscape)) == []
    assert list(batcher.add("a", "y", 0, packed, portrait)) == []
    full, = batcher.add("a", "w", 0, packed, landscape)
    assert (full.geometry, full.owners) == (landscape, {"x", "w"})
    partial, = batcher.flush()
    assert (partial.geometry, partial.owners, partial.fill) == (portrait, {"y"}, 1)


def test_kept_buffers_are_bounded_per_model():
    batcher = Batcher(batch_size=2)
    for batch in batcher.add("b", "v", 0, _frames(0, 2, width=4)):
        batcher.give_back(batch)
    for width in range(5, 5 + SPARE_SHAPES_PER_MODEL + 3):  # many frame sizes for "a"
        for batch in batcher.add("a", "v", 0, _frames(0, 2, width=width)):
            batcher.give_back(batch)
    kept = {}
    for model, shape in batcher.spare_shapes():
        kept.setdefault(model, []).append(shape[1])
    assert kept["b"] == [4]  # not pushed out by the other model's sizes
    assert kept["a"] == list(range(5 + 3, 5 + SPARE_SHAPES_PER_MODEL + 3))  # most recent


def test_waiting_videos_release_their_batches_only(tmp_path, monkeypatch):
    """Past MAX_WAITING_VIDEOS decoded videos waiting for partial batches, the batches that
    hold their rows run, padded; a batch of a video still decoding keeps filling."""
    import hero_features.pipeline as pipeline

    monkeypatch.setattr(pipeline, "MAX_WAITING_VIDEOS", 1)
    runner = _runner()
    launched = []
    launch = runner.launch
    runner.launch = lambda batch: (launched.append(batch.owners), launch(batch))[1]
    core = Pipeline(runner, [InputGroup(("a",), "frame", 4, False)], batch_size=4,
                    clip_len=Fraction(2))
    ids = {}
    for name, width in (("a", 4), ("b", 5), ("c", 6)):  # three frame sizes: three batches
        ids[name], _, _ = core.add(name, Job(tmp_path / f"{name}.mp4", {"a": None}))
        assert not core.feed(Units(ids[name], 0, _frames(1, 1, width=width)))
    assert not core.feed(Done(ids["a"]))  # one video waiting: allowed
    finished = core.feed(Done(ids["c"]))  # two: a's and c's batches run, b's does not
    assert sorted(key for key, _ in finished) == ["a", "c"]
    assert sorted(map(sorted, launched)) == [[ids["a"]], [ids["c"]]]
    assert core.feed(Done(ids["b"])) == [] and core.flush()[0][0] == "b"

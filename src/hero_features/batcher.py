"""Units of many videos (or requests) -> batches of one fixed shape per model and unit shape.

A batch is always `batch_size` units: the last, partial batch of a shape is padded with
zeros, and the padding rows are dropped when the rows come back. So every forward pass of a
model over units of one shape has the same input shape, and a row never depends on what it
was batched with: a video's features are the same bytes alone or among others, whichever
backend ran it, resumed or not (docs/architecture.md, "Fixed batch shapes"). The price is
the compute of the padding rows of partial batches.

Batch buffers are reused (pinned on CUDA): a long run does not allocate a fresh batch-sized
buffer every batch; at most SPARE_SHAPES_PER_MODEL unit shapes per model keep theirs.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Iterator

import numpy as np
import torch

from .errors import BatchMemoryError
from .weights import short_reason

SPARE_SHAPES_PER_MODEL = 4  # unit shapes per model whose batch buffers are kept for reuse


@dataclass
class Batch:
    """Units of one model and unit shape, copied into one fixed-shape buffer."""

    model: str
    buffer: torch.Tensor  # (batch_size, *unit shape) uint8
    # swsplan.DeviceGeometry of units that are packed YUV planes (--scale-on device), which
    # the device converts to rgb24 first; None: the units are rgb24 already.
    geometry: object = None
    segments: list = field(default_factory=list)  # (owner, first unit index, count)
    fill: int = 0  # real units; the rest of the buffer is padding

    @property
    def owners(self) -> set:
        return {owner for owner, _, _ in self.segments}

    def split(self, rows) -> Iterator[tuple[Hashable, int, int, object]]:
        """(owner, first unit index, count, its rows) for each segment; `rows` is the batch's
        output (padding rows are never handed out), or None when there is none."""
        offset = 0
        for owner, start, count in self.segments:
            yield owner, start, count, None if rows is None else rows[offset:offset + count]
            offset += count


class Batcher:
    """Fills batches per (model, unit shape) across owners; `add` and `flush` hand out the
    batches to run, `give_back` takes a batch's buffer back once it has been run. Not
    thread-safe: one caller at a time."""

    def __init__(self, batch_size: int, pin_memory: bool = False):
        self.batch_size = batch_size
        self.pin_memory = pin_memory
        # (model, unit shape, geometry) -> the batch being filled: units of one model are
        # batched across owners, but only with units of the same shape (frames of differently
        # sized videos cannot share a tensor) and, for packed YUV units, the same geometry
        # (the device converts a batch in one go).
        self._open: dict[tuple, Batch] = {}
        # Buffers whose batch is through the model, by (model, shape), for reuse.
        self._spare: "OrderedDict[tuple, list[torch.Tensor]]" = OrderedDict()

    def add(self, model: str, owner: Hashable, start: int, units: np.ndarray,
            geometry=None) -> Iterator[Batch]:
        """Copy `units` (unit indices start, start + 1, ... of `owner`; packed YUV planes of
        `geometry` when given) into their batches, yielding each batch as it fills up: run it
        (and give it back) before taking the next, and its buffer is the next one's. Iterate
        to the end: the array may be a shared-memory view that is only valid until the
        caller's next message, so nothing keeps it."""
        shape = tuple(units.shape[1:])
        key = (model, shape, geometry)
        copied = 0
        while copied < len(units):
            batch = self._open.get(key)
            if batch is None:
                batch = self._open[key] = Batch(model, self._buffer((model, shape)), geometry)
            count = min(len(units) - copied, self.batch_size - batch.fill)
            np.copyto(batch.buffer[batch.fill:batch.fill + count].numpy(),
                      units[copied:copied + count])
            batch.segments.append((owner, start + copied, count))
            batch.fill += count
            copied += count
            if batch.fill == self.batch_size:
                yield self._open.pop(key)

    def flush(self, owners=None) -> list[Batch]:
        """The partial batches (only those holding units of `owners`, when given), their
        padding zeroed (a reused buffer holds an older batch)."""
        keys = [key for key, batch in self._open.items()
                if owners is None or not owners.isdisjoint(batch.owners)]
        batches = [self._open.pop(key) for key in keys]
        for batch in batches:
            batch.buffer[batch.fill:].zero_()
        return batches

    def give_back(self, batch: Batch) -> None:
        key = (batch.model, tuple(batch.buffer.shape[1:]))
        self._spare.setdefault(key, []).append(batch.buffer)
        self._spare.move_to_end(key)
        # Per model, so resnet's many frame sizes never evict a clip model's one big buffer;
        # the least recently used sizes go first.
        shapes = [k for k in self._spare if k[0] == key[0]]
        for old in shapes[:-SPARE_SHAPES_PER_MODEL]:
            del self._spare[old]

    def spare_shapes(self) -> list[tuple]:
        """(model, unit shape) of the kept buffers, least recently used first."""
        return list(self._spare)

    def _buffer(self, key: tuple) -> torch.Tensor:
        spare = self._spare.get(key)
        if spare:
            return spare.pop()
        try:
            return torch.empty((self.batch_size, *key[1]), dtype=torch.uint8,
                               pin_memory=self.pin_memory)
        except (RuntimeError, MemoryError) as exc:  # torch: "can't allocate memory"
            size = self.batch_size * int(np.prod(key[1]))
            raise BatchMemoryError(
                f"cannot allocate a {size / 2**20:,.0f} MiB input buffer for one {key[0]} "
                f"batch of --batch_size {self.batch_size} ({short_reason(exc)}); use a "
                f"smaller --batch_size") from None

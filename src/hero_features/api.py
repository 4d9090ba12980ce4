"""The Python API: features of videos in a notebook or another pipeline, through the very core
the command line runs (decode workers, fixed-shape batches across videos, the same models),
so a video's features are the bytes `hero-features extract` writes for it with the same
settings (batch size, device, precision, torch threads). docs/api.md shows its use.

    import hero_features
    features = hero_features.extract("a.mp4", models=["slowfast", "resnet"])
    features["slowfast"].shape  # (N, 2304) float16

    with hero_features.FeatureExtractor(models=["clip-vit"], device="cpu") as fx:
        for result in fx.stream(paths):  # in the order the videos finish
            if result.ok:
                use(result.video, result.features["clip-vit"])
            else:
                stage, reason = result.failure
"""
from __future__ import annotations

import os
from contextlib import closing
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

from .assembler import VideoResult
from .config import (DEFAULT_BATCH_SIZE, DEFAULT_DECODE_WORKERS, DEFAULT_VIDEO_TIMEOUT, Job,
                     RunConfig, check_run, model_list)
from .errors import UsageError, VideoFailed

PathLike = Union[str, os.PathLike]
DEFAULT_MODELS = ("slowfast", "resnet")


class FeatureExtractor:
    """The models loaded once on one device; `stream` and `extract` run videos through them.

    Arguments mean what the command line's flags of the same name mean: `clip_len` (seconds
    per row: "3/2", 1.5, 2), `device` ("cpu", "cuda", "cuda:1"; None: cuda when torch sees
    one), `weights_dir` (searched first for the checkpoints, which are found or fetched as
    the command line does), `batch_size`, `num_decoding_thread` (decode worker processes; 0
    decodes in this process), `target_framerate`, `min_num_features`, `precision` ("fp32",
    "fp16", "bf16"), `scale_on` ("cpu", "device": --scale-on), `checkpoint` (one model
    only), `download`, `video_timeout` (seconds; 0 or None: no limit). Errors are
    hero_features.HeroFeaturesError: UsageError for settings no run can use, WeightsError
    for a checkpoint that is missing or does not fit.
    """

    def __init__(self, models: Union[str, Sequence[str]] = DEFAULT_MODELS,
                 clip_len: Union[str, float] = "3/2", device=None,
                 weights_dir: Optional[PathLike] = None, *,
                 batch_size: int = DEFAULT_BATCH_SIZE,
                 num_decoding_thread: int = DEFAULT_DECODE_WORKERS,
                 target_framerate: int = 30, min_num_features: int = 1,
                 precision: str = "fp32", scale_on: str = "cpu",
                 checkpoint: Optional[PathLike] = None,
                 download: bool = True,
                 video_timeout: Optional[float] = DEFAULT_VIDEO_TIMEOUT):
        from .device_runner import DeviceRunner, pick_device

        names = model_list(models)
        if checkpoint is not None and len(names) > 1:
            raise UsageError("--checkpoint names one file; use --weights_dir with several "
                             "models")
        fraction = check_run(names, clip_len, batch_size=batch_size,
                             decode_workers=num_decoding_thread, target_fps=target_framerate,
                             min_num_features=min_num_features,
                             video_timeout=video_timeout or 0, precision=precision,
                             scale_on=scale_on)
        self.models = names
        self.config = RunConfig(
            models=names, clip_len=fraction, batch_size=batch_size,
            decode_workers=num_decoding_thread, target_fps=target_framerate,
            min_num_features=min_num_features,
            weights_dir=Path(weights_dir) if weights_dir is not None else None,
            checkpoint=Path(checkpoint) if checkpoint is not None else None,
            download=download, video_timeout=video_timeout or None, progress=False,
            precision=precision, scale_on=scale_on)
        self.device = pick_device(str(device) if device is not None else None)
        self._runner = DeviceRunner.for_config(self.config, self.device)

    def stream(self, videos: Iterable[PathLike]) -> Iterator[VideoResult]:
        """One VideoResult per video, in the order they finish (several decode at once and
        are batched together): `result.video`, `result.ok`, `result.features` (model ->
        (N, D) float16 array) or `result.failure` ((stage, reason), as failed.jsonl would
        log it), `result.warnings` (features from a damaged stream)."""
        if self._runner is None:
            raise UsageError("this FeatureExtractor is closed")
        from .pipeline import results

        jobs = ((index, Job(Path(video), {model: None for model in self.models}))
                for index, video in enumerate(videos))
        with closing(results(self.config, self._runner, jobs)) as finished:
            for _, result in finished:
                yield result

    def extract(self, video: PathLike) -> dict:
        """{model id: (N, D) float16 array} of one video; VideoFailed (stage, reason) when it
        gives none."""
        result, = self.stream([video])
        if not result.ok:
            raise VideoFailed(result.video, *result.failure)
        return result.features

    def close(self) -> None:
        """Let the models go (their memory, on the device too)."""
        self._runner = None

    def __enter__(self) -> "FeatureExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def extract(video: PathLike, models: Union[str, Sequence[str]] = DEFAULT_MODELS,
            clip_len: Union[str, float] = "3/2", device=None,
            weights_dir: Optional[PathLike] = None, **settings) -> dict:
    """{model id: (N, D) float16 array} of one video, equal to what `hero-features extract`
    writes for it with the same settings. Loads the models for this one call: for many
    videos, FeatureExtractor loads them once. Settings as FeatureExtractor's (decoding runs
    in this process unless num_decoding_thread is given)."""
    settings.setdefault("num_decoding_thread", 0)
    with FeatureExtractor(models, clip_len, device, weights_dir, **settings) as fx:
        return fx.extract(video)

"""The one exception family of hero-features. Each error's text is what the command line
prints after "hero-features: error: "; the command line maps the family to exit statuses in
one place (cli.exit_status_of), and the Python API raises the same classes.
"""
from __future__ import annotations


class HeroFeaturesError(Exception):
    """Base of every error hero-features raises on purpose (one line, no traceback needed)."""


class UsageError(HeroFeaturesError):
    """The run cannot start as asked: a bad setting, an unreadable csv, outputs that cannot
    be written (exit status 2)."""


class WeightsError(HeroFeaturesError, RuntimeError):
    """A checkpoint that is missing, fails verification, or does not fit the model (exit
    status 2)."""


class StartupError(HeroFeaturesError, RuntimeError):
    """The run cannot start: no worker could (each failed before taking a video), or Ray is
    not installed (exit status 2)."""


class BatchMemoryError(HeroFeaturesError, RuntimeError):
    """A batch buffer of --batch_size units cannot be allocated: the run cannot go on as
    configured (exit status 2)."""


class OutputsStopped(HeroFeaturesError):
    """The outputs' disk cannot take more (full, read-only, over quota): the run stopped with
    what is finished written (exit status 1)."""


class VideoFailed(HeroFeaturesError):
    """A video gave no features (Python API): `stage` says which step failed (open, probe,
    decode, model, write...), `reason` why, as failed.jsonl would log it."""

    def __init__(self, video, stage: str, reason: str):
        super().__init__(f"{video}: {stage} failed: {reason}")
        self.video, self.stage, self.reason = video, stage, reason

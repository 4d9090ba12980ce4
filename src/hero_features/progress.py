"""The progress bar of a run, counted in seconds of video rather than in videos.

A long video moves the bar while it is being decoded, the rate is in video-seconds per second,
and tqdm's ETA comes from an estimated total: the durations of the videos seen so far, plus
their mean for each video not yet opened (a corpus's durations are learned as its videos are
probed, never by probing them all up front). Every backend feeds the same three events per
video, from whichever thread or process sees them: `begin` (duration known, or None for
streams without one), `reach` (seconds decoded so far) and `end`.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Hashable, Optional

from tqdm import tqdm


class VideoProgress:
    def __init__(self, videos: Optional[int], enabled: bool = True):
        self.videos = videos  # videos in the run, None when unknown
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._durations: dict[Hashable, Optional[float]] = {}  # open videos
        self._reached: dict[Hashable, float] = {}  # open videos: seconds decoded so far
        self._finished_seconds = 0.0  # of the videos that ended
        self._known_seconds = 0.0  # total duration of the ended videos whose length is known
        self._known_count = 0
        self._drawn = 0.0  # monotonic time of the last redraw
        self._started = time.monotonic()
        # The rate is written by _refresh: tqdm's own turns into s/video-s below 1 per second.
        self.bar = tqdm(total=None, unit=" video-s", unit_scale=True, disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} video-s "
                                   "[{elapsed}<{remaining}{postfix}]")
        self._refresh()

    def begin(self, key: Hashable, duration: Optional[float]) -> None:
        with self._lock:
            self._durations[key] = duration if duration and duration > 0 else None
            self._reached.setdefault(key, 0.0)
            self._refresh()

    def reach(self, key: Hashable, seconds: float) -> None:
        """`seconds` of the video `key` are decoded; never moves back, never past its end."""
        with self._lock:
            if key not in self._reached:
                return
            duration = self._durations.get(key)
            if duration is not None:
                seconds = min(seconds, duration)
            if seconds > self._reached[key]:
                self._reached[key] = seconds
                self._refresh(soon=True)

    def end(self, key: Hashable, ok: bool, seconds: Optional[float] = None) -> None:
        """The video is written (ok) or given up. A done video counts its whole length
        (`seconds`, else its duration); a failed one only what was decoded of it."""
        with self._lock:
            duration = self._durations.pop(key, None)
            reached = self._reached.pop(key, 0.0)
            length = (seconds or duration or reached) if ok else reached
            self._finished_seconds += length
            if ok and length > 0:
                self._known_seconds += length
                self._known_count += 1
            if ok:
                self.done += 1
            else:
                self.failed += 1
            self._refresh()

    def note(self, text: str) -> None:
        tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()

    # -- the bar -------------------------------------------------------------------------------
    def position(self) -> float:
        return self._finished_seconds + sum(self._reached.values())

    def estimated_total(self) -> Optional[float]:
        """Seconds of video in the whole run as far as it can be told now; None before any
        video's length is known."""
        open_known = [d for d in self._durations.values() if d is not None]
        count = self._known_count + len(open_known)
        if count == 0:
            return None
        mean = (self._known_seconds + sum(open_known)) / count
        open_total = sum(d if d is not None else max(self._reached[k], mean)
                         for k, d in self._durations.items())
        ended = self.done + self.failed
        unopened = max(0, self.videos - ended - len(self._durations)) \
            if self.videos is not None else 0
        return self._finished_seconds + open_total + unopened * mean

    def _refresh(self, soon: bool = False) -> None:
        """Redraw; `soon`: not if the bar was drawn less than 0.1 s ago (one video can send
        a frame's worth of events many times a second)."""
        now = time.monotonic()
        if soon and now - self._drawn < 0.1:
            return
        self._drawn = now
        total = self.estimated_total()
        position = self.position()
        if total is not None:
            self.bar.total = max(total, position)
        self.bar.n = position
        of = f"/{self.videos}" if self.videos is not None else ""
        rate = position / max(now - self._started, 1e-9)
        self.bar.set_postfix_str(f"{rate:.2f} video-s/s, {self.done}{of} videos, "
                                 f"{self.failed} failed", refresh=False)
        self.bar.refresh()

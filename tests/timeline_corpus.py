"""Videos whose timelines are not a tidy "first frame at 0" (made with the ffmpeg CLI).

Real footage starts late (MPEG-TS/PS start at ~1.4 s / ~0.5 s, re-muxed files keep an
offset), puts audio before video, restarts or wraps its timestamps, cuts open GOPs, has no
container at all (a raw .h264 stream) or a variable frame rate. Each case is small (about
320x240, 1.5-6 s) and made from lavfi sources by the `ffmpeg` CLI, which is also the oracle
the tests compare with. `build(folder)` makes every case once and returns {name: path}.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SIZE = "320x240"


def _video(rate="25", seconds=3.0, size=SIZE, extra_filter=""):
    graph = f"testsrc2=size={size}:rate={rate}:duration={seconds}"
    return ["-f", "lavfi", "-i", graph + (f",{extra_filter}" if extra_filter else "")]


def _audio(seconds=3.0, frequency=440):
    return ["-f", "lavfi", "-i", f"sine=frequency={frequency}:duration={seconds}"]


H264 = ["-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-g", "25"]
AAC = ["-c:a", "aac", "-b:a", "64k"]


@dataclass(frozen=True)
class Case:
    name: str  # file name, its extension chooses the container unless `args` says
    what: str  # one line for docs/fidelity.md
    steps: tuple  # ffmpeg argument lists (without "ffmpeg -y"); "{out}", "{dir}" substituted


def _one(*args) -> tuple:
    return (tuple(args) + ("{out}",),)


CASES = [
    Case("ts_h264.ts", "H.264 + AAC in MPEG-TS (starts at ~1.4 s, audio first)",
         _one(*_video(), *_audio(), *H264, *AAC, "-f", "mpegts")),
    Case("ts_mpeg2.ts", "MPEG-2 + MP2 in MPEG-TS",
         _one(*_video(), *_audio(), "-c:v", "mpeg2video", "-q:v", "4", "-c:a", "mp2",
              "-f", "mpegts")),
    Case("ps_mpeg2.mpg", "MPEG-2 program stream (starts at ~0.5 s)",
         _one(*_video(), *_audio(), "-c:v", "mpeg2video", "-q:v", "4", "-c:a", "mp2",
              "-f", "mpeg")),
    Case("offset5.mp4", "MP4 whose timestamps start at 5 s (-output_ts_offset 5)",
         _one(*_video(), *_audio(), *H264, *AAC, "-output_ts_offset", "5")),
    Case("offset5.mkv", "Matroska whose timestamps start at 5 s",
         _one(*_video(), *_audio(), *H264, *AAC, "-output_ts_offset", "5")),
    Case("late_video.mkv", "Matroska, video starts 0.3 s after the audio",
         _one("-itsoffset", "0.3", *_video(), *_audio(3.3), *H264, *AAC)),
    Case("late_video.mp4", "MP4, video starts 0.3 s after the audio (edit list)",
         _one("-itsoffset", "0.3", *_video(), *_audio(3.3), *H264, *AAC)),
    Case("late_video.webm", "WebM VP8 + Opus, video 0.3 s after the audio (Opus pre-skip)",
         _one("-itsoffset", "0.3", *_video(), *_audio(3.3), "-c:v", "libvpx", "-b:v", "400k",
              "-c:a", "libopus")),
    Case("ntsc_audio_first.mp4", "29.97 fps, audio 0.2 s before the video",
         _one("-itsoffset", "0.2", *_video("30000/1001"), *_audio(3.2), *H264, *AAC)),
    Case("concat.ts", "two MPEG-TS files joined byte-wise: timestamps restart half way",
         (("-f", "lavfi", "-i", f"testsrc2=size={SIZE}:rate=25:duration=3", *_audio(),
           *H264, *AAC, "-f", "mpegts", "{dir}/concat_a.part"),
          ("-f", "lavfi", "-i", f"testsrc2=size={SIZE}:rate=25:duration=3,hue=h=90",
           *_audio(3, 880), *H264, *AAC, "-f", "mpegts", "{dir}/concat_b.part"),
          ("cat", "{dir}/concat_a.part", "{dir}/concat_b.part"))),
    Case("concat_resize.ts", "joined MPEG-TS files of two frame sizes: the CLI rebuilds its "
                             "graph (fresh fps filter, extra bicubic autoscale)",
         (("-f", "lavfi", "-i", f"testsrc2=size={SIZE}:rate=25:duration=3", *_audio(),
           *H264, *AAC, "-f", "mpegts", "{dir}/resize_a.part"),
          ("-f", "lavfi", "-i", "testsrc2=size=240x320:rate=25:duration=3", *H264,
           "-f", "mpegts", "{dir}/resize_b.part"),
          ("cat", "{dir}/resize_a.part", "{dir}/resize_b.part"))),
    Case("wrap.ts", "MPEG-TS whose 33-bit timestamps wrap 1.3 s in",
         _one(*_video(), *_audio(), *H264, *AAC, "-output_ts_offset", "95441",
              "-f", "mpegts")),
    Case("open_gop_cut.mkv", "open-GOP H.264 cut by stream copy: leading B-frames",
         (("-f", "lavfi", "-i", f"testsrc2=size={SIZE}:rate=25:duration=5", "-c:v", "libx264",
           "-preset", "ultrafast", "-x264-params", "open-gop=1:keyint=25:bframes=3",
           "-f", "mpegts", "{dir}/open_gop.part"),
          ("-ss", "1.3", "-i", "{dir}/open_gop.part", "-c", "copy", "{out}"))),
    Case("open_gop_cut.ts", "the same cut in MPEG-TS",
         (("-f", "lavfi", "-i", f"testsrc2=size={SIZE}:rate=25:duration=5", "-c:v", "libx264",
           "-preset", "ultrafast", "-x264-params", "open-gop=1:keyint=25:bframes=3",
           "-f", "mpegts", "{dir}/open_gop_ts.part"),
          ("-ss", "1.3", "-i", "{dir}/open_gop_ts.part", "-c", "copy", "-f", "mpegts",
           "{out}"))),
    Case("raw.h264", "a raw H.264 elementary stream (no container timestamps)",
         _one(*_video(), *H264, "-f", "h264")),
    Case("vfr.mkv", "variable frame rate (frames dropped unevenly, -vsync vfr)",
         _one(*_video("30", 4, extra_filter="select='not(mod(n\\,3))+lt(n\\,20)'"),
              "-vsync", "vfr", *H264)),
    Case("rate24.ts", "24 fps in MPEG-TS", _one(*_video("24"), *_audio(), *H264, *AAC,
                                                "-f", "mpegts")),
    Case("rate2997.ts", "29.97 fps in MPEG-TS",
         _one(*_video("30000/1001"), *_audio(), *H264, *AAC, "-f", "mpegts")),
    Case("rate50.ts", "50 fps in MPEG-TS", _one(*_video("50"), *_audio(), *H264, *AAC,
                                                "-f", "mpegts")),
    Case("rate60.ts", "60 fps in MPEG-TS", _one(*_video("60"), *_audio(), *H264, *AAC,
                                                "-f", "mpegts")),
    Case("short.ts", "a 1.5 s MPEG-TS clip", _one(*_video(seconds=1.5), *_audio(1.5), *H264,
                                                  *AAC, "-f", "mpegts")),
    Case("short.mp4", "a 1.5 s MP4 starting at 2 s (the short-video rule applies)",
         _one(*_video(seconds=1.5), *_audio(1.5), *H264, *AAC, "-output_ts_offset", "2")),
    Case("h264_bframes.avi", "H.264 with B-frames in AVI (no presentation times stored)",
         _one(*_video(seconds=2), *_audio(2), *H264, "-c:a", "mp3")),
    Case("h264_no_bframes.avi", "H.264 without B-frames in AVI",
         _one(*_video(seconds=2), "-c:v", "libx264", "-preset", "ultrafast", "-bf", "0")),
    Case("mpeg4_bframes.avi", "MPEG-4 Part 2 with B-frames in AVI (an XviD-style file)",
         _one(*_video(seconds=2), *_audio(2), "-c:v", "mpeg4", "-bf", "2", "-q:v", "4",
              "-c:a", "mp3")),
    Case("h264.flv", "H.264 + AAC in FLV (millisecond clock)",
         _one(*_video(seconds=2), *_audio(2), *H264, *AAC)),
    Case("theora.ogg", "Theora + Vorbis in Ogg",
         _one(*_video(seconds=2), *_audio(2), "-c:v", "libtheora", "-q:v", "5",
              "-c:a", "libvorbis")),
    Case("wmv2.wmv", "WMV2 + WMA in ASF",
         _one(*_video(seconds=2), *_audio(2), "-c:v", "wmv2", "-c:a", "wmav2")),
    Case("interlaced.ts", "interlaced (MBAFF) H.264 in MPEG-TS",
         _one(*_video(seconds=2), *_audio(2), "-c:v", "libx264", "-preset", "ultrafast",
              "-flags", "+ilme+ildct", "-x264-params", "tff=1", *AAC, "-f", "mpegts")),
    Case("negative_cts.mp4", "MP4 with negative composition offsets (B-pyramid, no edit list)",
         _one(*_video(seconds=2), *_audio(2), "-c:v", "libx264", "-preset", "ultrafast",
              "-bf", "3", *AAC, "-movflags", "+negative_cts_offsets")),
    Case("timecode.mov", "QuickTime with a timecode track (three streams)",
         _one(*_video(seconds=2), *_audio(2), *H264, *AAC, "-timecode", "01:00:00:00")),
    Case("vp9_opus.webm", "VP9 + Opus WebM at 30 fps (a typical web download)",
         _one(*_video("30", 2), *_audio(2), "-c:v", "libvpx-vp9", "-b:v", "300k",
              "-deadline", "realtime", "-c:a", "libopus")),
    Case("orientation_sei.mp4", "H.264 display-orientation SEI (rotate 90, mirrored) on the "
                                "first frame only: the CLI rebuilds its graph at frame 2",
         _one(*_video(seconds=2, size="320x176"), *H264, "-bsf:v",
              "h264_metadata=display_orientation=insert:rotate=90:flip=horizontal")),
]


def build(folder: Path) -> dict[str, Path]:
    """Make every case under `folder` with the ffmpeg CLI; {name: path}."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for case in CASES:
        out = folder / case.name
        for step in case.steps:
            args = [a.replace("{out}", str(out)).replace("{dir}", str(folder)) for a in step]
            if args[0] == "cat":
                with open(out, "wb") as joined:
                    for part in args[1:]:
                        joined.write(Path(part).read_bytes())
                continue
            subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True,
                           stdin=subprocess.DEVNULL)
        made[case.name] = out
    return made

"""`hero-features inspect`: one line per file of an output folder, the rows of one file with
the part of the video each stands for, and the contact sheet, whose tiles must be the very
frames each row was computed from (the test videos' frames show their own index as bars)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hero_features.inspect as inspect_module
from hero_features.cli import main
from hero_features.sampling import temporal_indices
from videos import read_index, write_video

FPS, SECONDS = 10, 4  # 40 frames; clip_len 1 gives 4 rows for every model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    videos = tmp_path_factory.mktemp("videos")
    (videos / "sub").mkdir()
    # Square, so the centre crop keeps all eight bars.
    write_video(videos / "a.mp4", frames=FPS * SECONDS, fps=FPS, width=256, height=256)
    write_video(videos / "sub" / "b.mp4", frames=FPS * 2, fps=FPS, width=256, height=256)
    return videos


@pytest.fixture(scope="module")
def output(tmp_path_factory, corpus, synthetic_checkpoints) -> Path:
    """A real extract output (clip-vit), plus slowfast files with the row counts the extractor
    writes (4 and 2 clips), so the clip-model sheet needs no 3-D model run."""
    out = tmp_path_factory.mktemp("out")
    assert main(["extract", "--model", "clip-vit", "--video_path", str(corpus), "--output_dir",
                 str(out), "--clip_len", "1", "--device", "cpu", "--no_progress",
                 "--num_decoding_thread", "0", "--weights_dir", str(synthetic_checkpoints)]) == 0
    for name, rows in (("a.npz", 4), ("sub/b.npz", 2)):
        path = out / "slowfast_features" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, features=np.zeros((rows, 2304), np.float16))
    return out


def test_an_output_folder_gives_one_line_per_file(output, capsys):
    assert main(["inspect", str(output), "--clip_len", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "clip-vit_features/a.npz", "clip-vit_features/sub/b.npz",
        "slowfast_features/a.npz", "slowfast_features/sub/b.npz"]
    assert lines[0].startswith("clip-vit_features/a.npz: 4 rows, float16 (4, 512), clip-vit, "
                               "clip_len 1 (given): row k = frame ~(k+0.5)*1 s, covering "
                               "0.00-4.00 s; record: ")
    assert "clip_len=1" in lines[0] and "model=clip-vit" in lines[0]
    assert lines[3].startswith("slowfast_features/sub/b.npz: 2 rows, float16 (2, 2304), "
                               "slowfast, clip_len 1 (given): row k = clip [k*1, (k+1)*1) s "
                               "at 30 fps, covering 0.00-2.00 s")
    assert lines[3].endswith("; no record")  # written by np.savez, as the reference did


def test_a_broken_file_is_listed_and_exits_1(output, tmp_path, capsys):
    folder = tmp_path / "out"
    shutil.copytree(output / "clip-vit_features", folder / "clip-vit_features")
    (folder / "clip-vit_features" / "broken.npz").write_bytes(b"PK not really")
    assert main(["inspect", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "clip-vit_features/broken.npz: unreadable" in out
    assert out.count("\n") == 3  # and the two good files


def test_one_file_lists_its_rows_from_the_video(output, corpus, capsys):
    assert main(["inspect", str(output / "clip-vit_features" / "a.npz"), "--clip_len", "1",
                 "--video", str(corpus / "a.mp4")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == [f"  row {k}: {k:.3f}-{k + 1:.3f} s, frame ~{k + 0.5:.3f} s"
                         for k in range(4)]
    assert main(["inspect", str(output / "slowfast_features" / "sub" / "b.npz"), "--clip_len",
                 "1", "--video", str(corpus / "sub" / "b.mp4")]) == 0
    lines = capsys.readouterr().out.splitlines()
    picks = temporal_indices(30, FPS)  # 10 fps source: only the first 21 of 30 are seen
    assert lines[1:] == [f"  row {k}: {k:.3f}-{k + 1:.3f} s, 32 frames at "
                         f"{(30 * k + picks[0]) / 30:.3f}..{(30 * k + picks[-1]) / 30:.3f} s "
                         f"(30 fps)" for k in range(2)]


def test_the_record_of_settings_is_shown_and_used(output, capsys):
    # extract sealed its settings into the file: no --clip_len needed to read it right
    assert main(["inspect", str(output / "clip-vit_features" / "a.npz")]) == 0
    out = capsys.readouterr().out
    assert "clip_len 1 (recorded)" in out and "covering 0.00-4.00 s" in out
    assert "model=clip-vit" in out and "precision=fp32" in out
    # a file without a record (the reference's np.savez) says so and assumes the default
    assert main(["inspect", str(output / "slowfast_features" / "a.npz")]) == 0
    out = capsys.readouterr().out
    assert "no record" in out and "(assumed)" in out


def _tile(sheet: Image.Image, box) -> np.ndarray:
    return np.asarray(sheet.crop(box).convert("RGB"))


def test_the_sheet_of_a_frame_model_shows_the_frames_the_rows_used(output, corpus, tmp_path):
    png = tmp_path / "sheet.png"
    assert main(["inspect", str(output / "clip-vit_features" / "a.npz"), "--clip_len", "1",
                 "--video", str(corpus / "a.mp4"), "--sheet", str(png)]) == 0
    sheet = Image.open(png)
    # 4 rows in one line of 112 px tiles: 2*4 margin + 4*(112+4) - 4; 2*4 + 112+14+4 - 4
    assert sheet.size == (468, 134)
    geometry = inspect_module.sheet_geometry("clip-vit", 4, 224, 224)
    for k in range(4):
        # fps filter at 1 fps: the last 10-fps frame before k + 0.5 s, i.e. frame 10k + 4
        assert read_index(_tile(sheet, geometry.tile_box(k))) == 10 * k + 4


def test_the_sheet_of_a_clip_model_shows_each_rows_sampled_frames(output, corpus, tmp_path,
                                                                  capsys):
    png = tmp_path / "clips.png"
    assert main(["inspect", str(output / "slowfast_features" / "a.npz"), "--clip_len", "1",
                 "--video", str(corpus / "a.mp4"), "--sheet", str(png), "--max_rows", "3"]) == 0
    assert "contact sheet: " in capsys.readouterr().out
    sheet = Image.open(png)
    # 3 rows of 32 tiles of 56 px after a 120 px label: 2*4 + 120 + 32*60 - 4; 3*(56+14+4) + 4
    assert sheet.size == (2044, 226)
    geometry = inspect_module.sheet_geometry("slowfast", 3, 224, 224)
    picks = temporal_indices(30, FPS)
    for k in range(3):
        for j, pick in enumerate(picks):
            # 30-fps timeline position n shows the last 10-fps frame starting at or before it
            position = 30 * k + int(pick)
            assert read_index(_tile(sheet, geometry.tile_box(k, j))) == position // 3, (k, j)


@pytest.mark.parametrize("argv, message", [
    (["--sheet", "x.png"], "--sheet needs --video"),
    (["--model", "nope"], "unknown model nope"),
])
def test_usage_errors_exit_2(output, argv, message, capsys):
    assert main(["inspect", str(output / "clip-vit_features" / "a.npz"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_folder_and_missing_paths_exit_2(output, corpus, tmp_path, capsys):
    assert main(["inspect", str(output), "--video", str(corpus / "a.mp4")]) == 2
    assert "take one .npz file, not a folder" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    assert "no .npz feature files" in capsys.readouterr().err

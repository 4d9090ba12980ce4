import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hero_features.manifest import (
    VIDEO_EXTENSIONS,
    ManifestError,
    OutputCollisionError,
    Row,
    feature_path,
    find_videos,
    gather,
    is_complete,
    plan_rows,
    read_csv,
    write_csv,
)

REFERENCE_EXTENSIONS = ".webm .mpg .mpeg .mpv .ogg .mp4 .m4p .avi .wmv .qt .mov .flv .swf".split()
DIM = 8


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def save_features(path: Path, array: np.ndarray, compressed: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:  # a file object: np.savez would append .npz to other names
        (np.savez_compressed if compressed else np.savez)(out, features=array)
    return path


def good_features(rows: int = 5, dim: int = DIM) -> np.ndarray:
    return np.arange(rows * dim, dtype=np.float16).reshape(rows, dim)


# --- find_videos ----------------------------------------------------------------------------

def test_find_videos_recurses_sorted_and_ignores_other_files(tmp_path):
    for name in ["b/x.mp4", "a/x.mp4", "a/deep/er/y.mkv", "top.avi", "notes.txt", "a/x.npz",
                 "a/mp4", "a/y.mp4.part"]:
        touch(tmp_path / name)
    assert find_videos(tmp_path) == [
        tmp_path / "a/deep/er/y.mkv", tmp_path / "a/x.mp4", tmp_path / "b/x.mp4",
        tmp_path / "top.avi",
    ]


def test_extensions_cover_reference_and_common_containers():
    assert set(REFERENCE_EXTENSIONS) <= VIDEO_EXTENSIONS
    assert {".mkv", ".m4v", ".ts", ".mts", ".m2ts", ".3gp", ".3g2", ".ogv", ".vob", ".divx",
            ".f4v", ".asf", ".rm", ".rmvb", ".dv", ".mxf", ".y4m"} <= VIDEO_EXTENSIONS
    assert all(ext == ext.lower() and ext.startswith(".") for ext in VIDEO_EXTENSIONS)


def test_every_extension_matches_in_any_case(tmp_path):
    expected = set()
    for index, ext in enumerate(sorted(VIDEO_EXTENSIONS)):
        for variant in (ext, ext.upper(), ext[:2].upper() + ext[2:]):
            expected.add(touch(tmp_path / f"v{index}_{variant.strip('.')}{variant}"))
    assert set(find_videos(tmp_path)) == expected
    assert touch(tmp_path / "X.MP4") in find_videos(tmp_path)


def test_hidden_files_and_folders_are_skipped(tmp_path):
    touch(tmp_path / "a/x.mp4")
    touch(tmp_path / "a/._x.mp4")
    touch(tmp_path / ".Trash-1000/old.mp4")
    touch(tmp_path / "a/.cache/y.mp4")
    assert find_videos(tmp_path) == [tmp_path / "a/x.mp4"]


def test_hidden_root_itself_is_walked(tmp_path):
    video = touch(tmp_path / ".videos/x.mp4")
    assert find_videos(tmp_path / ".videos") == [video]


def test_symlinked_directory_is_not_followed_but_file_link_is(tmp_path):
    root = tmp_path / "root"
    touch(root / "real/x.mp4")
    (root / "loop").symlink_to(root, target_is_directory=True)
    outside = touch(tmp_path / "elsewhere/y.mp4")
    (root / "linked_dir").symlink_to(outside.parent, target_is_directory=True)
    (root / "linked.mp4").symlink_to(outside)
    (root / "broken.mp4").symlink_to(tmp_path / "missing.mp4")
    # The dangling link is listed so that extraction logs it as failed, not skipped.
    assert find_videos(root) == [root / "broken.mp4", root / "linked.mp4", root / "real/x.mp4"]


def test_a_fifo_with_a_video_name_is_listed_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.mp4")
    os.mkfifo(tmp_path / "pipe.txt")
    assert find_videos(tmp_path) == [tmp_path / "pipe.mp4"]  # returns: nothing was opened


def test_find_videos_rejects_missing_root(tmp_path):
    with pytest.raises(NotADirectoryError):
        find_videos(tmp_path / "nope")


# --- feature_path / plan_rows ---------------------------------------------------------------

def test_feature_path_mirrors_sub_folders(tmp_path):
    root, out = tmp_path / "videos", tmp_path / "out"
    assert feature_path(root / "a/b/x.MP4", root, out, "slowfast") == (
        out / "slowfast_features/a/b/x.npz"
    )
    assert feature_path(root / "x.y.webm", root, out, "clip-vit") == (
        out / "clip-vit_features/x.y.npz"
    )


def test_same_name_in_two_folders_gives_two_outputs(tmp_path):
    root, out = tmp_path / "videos", tmp_path / "out"
    videos = [touch(root / "a/x.mp4"), touch(root / "b/x.mp4")]
    rows = plan_rows(find_videos(root), root, out, "resnet")
    assert rows == [
        Row(videos[0], out / "resnet_features/a/x.npz"),
        Row(videos[1], out / "resnet_features/b/x.npz"),
    ]


def test_relative_video_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    touch(tmp_path / "videos/a/x.mp4")
    [row] = plan_rows(find_videos(Path("videos")), Path("videos"), Path("out"), "mil-nce")
    assert row == Row(Path("videos/a/x.mp4"), Path("out/mil-nce_features/a/x.npz"))


def test_video_outside_root_is_rejected(tmp_path):
    root = tmp_path / "videos"
    for video in (tmp_path / "other/x.mp4", root / "../x.mp4", root):
        with pytest.raises(ValueError):
            feature_path(video, root, tmp_path / "out", "resnet")


@pytest.mark.parametrize("model", ["", ".", "..", "a/b"])
def test_model_id_cannot_escape_output_dir(tmp_path, model):
    with pytest.raises(ValueError):
        feature_path(tmp_path / "x.mp4", tmp_path, tmp_path / "out", model)


def test_collision_names_both_videos(tmp_path):
    root = tmp_path / "videos"
    first, second = touch(root / "a/x.mp4"), touch(root / "a/x.webm")
    touch(root / "b/y.mp4")
    with pytest.raises(OutputCollisionError) as caught:
        plan_rows(find_videos(root), root, tmp_path / "out", "slowfast")
    assert isinstance(caught.value, ValueError)
    assert str(first) in str(caught.value) and str(second) in str(caught.value)
    assert [(a, b) for a, b, _ in caught.value.collisions] == [(first, second)]


def test_every_collision_is_reported(tmp_path):
    root = tmp_path / "videos"
    videos = [root / f"{name}{ext}" for name in "abc" for ext in (".mp4", ".mkv")]
    with pytest.raises(OutputCollisionError) as caught:
        plan_rows(videos, root, tmp_path / "out", "resnet")
    assert len(caught.value.collisions) == 3


def test_same_video_listed_twice_is_one_row(tmp_path):
    video = tmp_path / "x.mp4"
    assert len(plan_rows([video, video], tmp_path, tmp_path / "out", "resnet")) == 1


# --- csv ------------------------------------------------------------------------------------

segment = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
    min_size=1, max_size=12,
).filter(lambda s: s not in {".", ".."})
path_text = st.builds(
    lambda absolute, parts: ("/" if absolute else "") + "/".join(parts),
    st.booleans(), st.lists(segment, min_size=1, max_size=4),
).filter(lambda s: s == s.rstrip())
tricky_path_text = st.one_of(
    path_text,
    st.lists(
        st.sampled_from(
            ["a", " ", ",", '"', "'", "é", "视频", "\t", ", ", '""', "x y", "\r", "\n", "\r\n"]
        ),
        min_size=1, max_size=8,
    ).map("".join).filter(lambda s: s.rstrip() == s),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(tricky_path_text, tricky_path_text), max_size=6))
def test_csv_round_trip(tmp_path_factory, pairs):
    path = tmp_path_factory.mktemp("csv") / "m.csv"
    rows = [Row(Path(video), Path(feature)) for video, feature in pairs]
    write_csv(rows, path)
    assert read_csv(path) == rows


def test_csv_round_trip_of_leading_space_and_commas(tmp_path):
    rows = [
        Row(Path(" leading space.mp4"), Path("out/ leading space.npz")),
        Row(Path("/v/a, b/\"q\" x.mp4"), Path("/o/a, b/\"q\" x.npz")),
        Row(Path("视频/é.mkv"), Path("out/视频/é.npz")),
        Row(Path("a\rb.mp4"), Path("o/a\nb.npz")),
    ]
    write_csv(rows, tmp_path / "m.csv")
    assert (tmp_path / "m.csv").read_text(encoding="utf-8").startswith("video_path,feature_path\n")
    assert read_csv(tmp_path / "m.csv") == rows


def test_csv_round_trip_of_undecodable_file_name(tmp_path):
    name = os.fsdecode(b"bad\xff name.mp4")
    rows = [Row(Path("/v") / name, Path("/o/x.npz"))]
    write_csv(rows, tmp_path / "m.csv")
    assert read_csv(tmp_path / "m.csv") == rows


def test_write_csv_refuses_trailing_whitespace(tmp_path):
    with pytest.raises(ValueError):
        write_csv([Row(Path("x.mp4 "), Path("x.npz"))], tmp_path / "m.csv")


def test_write_csv_creates_parents_and_replaces_atomically(tmp_path):
    path = tmp_path / "deep/er/csv/slowfast_info.csv"
    write_csv([Row(Path("a.mp4"), Path("a.npz"))], path)
    assert path.read_text() == "video_path,feature_path\na.mp4,a.npz\n"
    with pytest.raises(ValueError):
        write_csv([Row(Path("b.mp4"), Path("b.npz ")), ], path)
    assert path.read_text() == "video_path,feature_path\na.mp4,a.npz\n"
    write_csv([], path)
    assert path.read_text() == "video_path,feature_path\n"
    assert os.listdir(path.parent) == ["slowfast_info.csv"]


def test_read_reference_csv_without_quoting(tmp_path):
    path = tmp_path / "slowfast_info.csv"
    path.write_text(
        "video_path,feature_path\n"
        "/video/a b.mp4,/output/slowfast_features/a b.npz\n"
        "/video/c.webm,/output/slowfast_features/c.npz\n"
    )
    assert read_csv(path) == [
        Row(Path("/video/a b.mp4"), Path("/output/slowfast_features/a b.npz")),
        Row(Path("/video/c.webm"), Path("/output/slowfast_features/c.npz")),
    ]


def test_read_reference_readme_style_with_space_after_comma(tmp_path):
    path = tmp_path / "info.csv"
    path.write_bytes(
        b"\xef\xbb\xbfvideo_path, feature_path\r\n"
        b"\r\n"
        b"/video/a.mp4, /output/resnet_features/a.npz\r\n"
        b"  \n"
        b'/video/b.mp4, "/output/resnet_features/b,c.npz"  \n'
    )
    assert read_csv(path) == [
        Row(Path("/video/a.mp4"), Path("/output/resnet_features/a.npz")),
        Row(Path("/video/b.mp4"), Path("/output/resnet_features/b,c.npz")),
    ]


@pytest.mark.parametrize("text", [
    "",
    "\n\n",
    "video,feature\na.mp4,a.npz\n",
    "a.mp4,a.npz\n",
    "video_path\n",
    "video_path,feature_path,extra\n",
])
def test_header_errors(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(ManifestError):
        read_csv(path)


@pytest.mark.parametrize("bad_row", ["/v/a,b.mp4,/o/a.npz", "/v/a.mp4", "/v/a.mp4,", ",/o/a.npz"])
def test_wrong_field_count_names_the_line(tmp_path, bad_row):
    path = tmp_path / "m.csv"
    path.write_text(f"video_path,feature_path\n\n/v/ok.mp4,/o/ok.npz\n{bad_row}\n")
    with pytest.raises(ManifestError, match="line 4"):
        read_csv(path)


# --- is_complete ----------------------------------------------------------------------------

def test_complete_for_good_float16_file(tmp_path):
    assert is_complete(save_features(tmp_path / "x.npz", good_features()), DIM)
    assert is_complete(save_features(tmp_path / "c.npz", good_features(), compressed=True), DIM)
    assert is_complete(save_features(tmp_path / "one.npz", good_features(rows=1)), DIM)
    fortran = np.asfortranarray(good_features())
    assert is_complete(save_features(tmp_path / "f.npz", fortran), DIM)


@pytest.mark.parametrize("array", [
    good_features(dim=DIM + 1),
    good_features().astype(np.float32),
    good_features().astype(np.int16),
    good_features().reshape(-1),
    good_features().reshape(1, 5, DIM),
], ids=["wrong-dim", "float32", "int16", "1-d", "3-d"])
def test_not_complete_for_wrong_array(tmp_path, array):
    assert not is_complete(save_features(tmp_path / "x.npz", array), DIM)


@pytest.mark.parametrize("keep", [0.5, 0.9, -1])
def test_not_complete_when_truncated(tmp_path, keep):
    path = save_features(tmp_path / "x.npz", good_features(rows=100))
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)] if keep > 0 else data[:keep])
    assert not is_complete(path, DIM)


def test_not_complete_when_a_middle_piece_is_missing(tmp_path):
    path = save_features(tmp_path / "x.npz", good_features(rows=100))
    data = path.read_bytes()
    path.write_bytes(data[:200] + data[400:])
    assert not is_complete(path, DIM)


def test_not_complete_when_header_claims_more_than_stored(tmp_path):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, good_features(rows=10))
    short = buffer.getvalue()[:-DIM * 2]
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("features.npy", short)
    assert not is_complete(path, DIM)


def test_not_complete_for_other_broken_files(tmp_path):
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all" * 10)
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "dir.npz").mkdir()
    missing_key = tmp_path / "missing_key.npz"
    np.savez(missing_key, other=good_features())
    temporary = save_features(tmp_path / "x.npz.tmp", good_features())
    bare_npy = tmp_path / "bare.npz"
    np.save(open(bare_npy, "wb"), good_features())
    for name in ["garbage.npz", "empty.npz", "dir.npz", "missing_key.npz", "absent.npz",
                 "bare.npz"]:
        assert not is_complete(tmp_path / name, DIM), name
    assert not is_complete(temporary, DIM)


def test_not_complete_for_pickled_object_array(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, features=np.array([[object()] * DIM], dtype=object))
    assert not is_complete(path, DIM)


# --- gather ---------------------------------------------------------------------------------

DIMS = {"slowfast": 2304, "resnet": 2048, "clip-vit": 512}


def test_gather_lists_only_unfinished_outputs(tmp_path):
    root, out = tmp_path / "videos", tmp_path / "out"
    done, half_done, wrong_dim, fresh = (
        touch(root / name) for name in ["a/done.mp4", "a/half.mp4", "b/wrong.mkv", "new.MOV"]
    )
    save_features(out / "slowfast_features/a/done.npz", good_features(dim=2304))
    half = save_features(out / "slowfast_features/a/half.npz", good_features(dim=2304))
    half.write_bytes(half.read_bytes()[:100])
    save_features(out / "slowfast_features/b/wrong.npz", good_features(dim=2048))
    save_features(out / "resnet_features/b/wrong.npz", good_features(dim=2048))

    written = gather(root, out, ["slowfast", "resnet"], DIMS)

    assert written == {"slowfast": out / "csv/slowfast_info.csv",
                       "resnet": out / "csv/resnet_info.csv"}
    slowfast_videos = [row.video_path for row in read_csv(written["slowfast"])]
    assert slowfast_videos == [half_done, wrong_dim, fresh]
    assert read_csv(written["resnet"]) == [
        Row(done, out / "resnet_features/a/done.npz"),
        Row(half_done, out / "resnet_features/a/half.npz"),
        Row(fresh, out / "resnet_features/new.npz"),
    ]


def test_gather_collision_writes_nothing(tmp_path):
    root, out = tmp_path / "videos", tmp_path / "out"
    touch(root / "x.mp4")
    touch(root / "x.webm")
    with pytest.raises(OutputCollisionError):
        gather(root, out, ["resnet"], DIMS)
    assert not out.exists()


def test_gather_unknown_dim_writes_nothing(tmp_path):
    touch(tmp_path / "videos/x.mp4")
    with pytest.raises(KeyError):
        gather(tmp_path / "videos", tmp_path / "out", ["resnet", "mil-nce"], DIMS)
    assert not (tmp_path / "out").exists()


def test_gather_empty_tree_writes_header_only(tmp_path):
    (tmp_path / "videos").mkdir()
    written = gather(tmp_path / "videos", tmp_path / "out", ["clip-vit"], DIMS)
    assert written["clip-vit"].read_text() == "video_path,feature_path\n"

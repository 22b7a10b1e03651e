"""prepare_shards: from video files through shards and the reader to batches; layouts, resume, bad input."""

import argparse
import io
import json
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from clipcore import synthetic
from clipcore.errors import UsageError
from clipcore.shard_stream import ShardStream
from clipcore.video import read_clip
from recipes.prepare_shards import main, plan_clips, read_entries

RATE = 16000
CLIP = 1.5  # seconds per clip cut by the recipe; each 3-second video gives two


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    synthetic.write_toy_videos(root, 6, seed=0, container="mkv", duration=3.0, frame_size=64)
    whole = root / "cello" / "000000.mkv"
    (root / "broken").mkdir()
    truncated = root / "broken" / "truncated.mkv"
    truncated.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    (root / "broken" / "garbage.mp4").write_bytes(b"\x00not a video" * 64)
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _flac(shards, key) -> np.ndarray:
    for shard in shards:
        with tarfile.open(shard) as tar:
            if f"{key}.flac" in tar.getnames():
                return sf.read(io.BytesIO(tar.extractfile(f"{key}.flac").read()), dtype="float32")[0]
    raise KeyError(key)


def test_videos_to_shards_to_batches(videos, tmp_path, capsys):
    out = tmp_path / "shards"
    status, stdout, _ = _run(capsys, videos, out, "--clip-seconds", CLIP, "--shard-size", 4, "--workers", 2,
                             "--short-side", 64, "--dataset", "toy")
    assert status == 0
    shards = sorted(out.glob("*.tar"))
    assert "wrote 13 clips in 4 shards" in stdout, stdout  # 6 videos x 2 clips + the readable first clip of the truncated one
    assert "skipped 2 files" in stdout
    skipped = (out / "skipped.tsv").read_text()
    assert "truncated.mkv\t" in skipped and "is truncated" in skipped and "garbage.mp4\t" in skipped

    segment = 16000
    stream = ShardStream(shards, num_sources=2, batch_size=3, segment_samples=segment, train=False, query_frames=1,
                         frame_size=64)
    batches = list(stream)
    assert sum(len(b) for b in batches) == 6 and stream.skipped == 0
    for batch in batches:
        torch.testing.assert_close(batch.mixture, batch.sources.sum(1))
        for b, pair in enumerate(batch.keys):
            for n, key in enumerate(pair):
                stored = _flac(shards, key)
                start = (len(stored) - segment) // 2
                crop = stored[start : start + segment]
                source = batch.sources[b, n].numpy()
                gain = float(source @ crop / (crop @ crop))
                assert 0.25 <= gain <= 0.75
                np.testing.assert_allclose(source, gain * crop, atol=1e-6)
                # ...and what was stored is the toy world's audio (FLAC is lossless)
                _, video_id, start_ms = key.split("/")
                if video_id.startswith("broken"):
                    continue
                label, index = video_id.split("_")
                clip = synthetic.make_clip(int(index), seed=0, duration=3.0, frame_size=64)
                assert batch.labels[b][n] == label == clip.label
                offset = int(start_ms) * RATE // 1000 + start
                assert np.abs(crop - clip.audio[offset : offset + segment]).max() < 1e-4


def test_resume_keeps_complete_shards_and_refuses_other_settings(videos, tmp_path, capsys):
    out = tmp_path / "shards"
    args = [videos, out, "--clip-seconds", CLIP, "--shard-size", 5, "--short-side", 32]
    assert _run(capsys, *args)[0] == 0
    shards = sorted(out.glob("*.tar"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    skipped = (out / "skipped.tsv").read_text()
    assert "truncated.mkv: is truncated" in skipped  # a clip of a kept shard's file
    shards[1].unlink()
    stale = out / f".{shards[1].name}.abc.part"
    stale.write_bytes(b"half a shard")
    status, stdout, _ = _run(capsys, *args)
    assert status == 0 and "wrote 5 clips in 1 shards" in stdout and f"({len(shards) - 1} complete shards kept)" in stdout
    assert shards[1].exists() and not stale.exists()
    assert (out / "skipped.tsv").read_text() == skipped  # the kept shards' skips are still listed
    assert all(p.stat().st_mtime_ns == stamps[p] for p in shards if p != shards[1])
    status, _, stderr = _run(capsys, *args[:-1], 48)
    errors = [line for line in stderr.splitlines() if line.startswith("prepare_shards")]
    assert status == 2 and len(errors) == 1 and "other inputs or settings" in errors[0] and "Traceback" not in stderr


def test_sigterm_stops_the_run_resumably_with_one_line(videos, tmp_path, capsys):
    """A Slurm time limit or scancel: as Ctrl-C, exit 130 and a line saying how to resume; no
    traceback (a worker whose parent was gone printed one), no partial shard."""
    import sys

    from tests.subprocesses import sigterm_when

    out = tmp_path / "shards"
    args = [str(videos), str(out), "--clip-seconds", "0.25", "--min-seconds", "0.2", "--fps", "8", "--shard-size",
            "4", "--short-side", "32", "--workers", "2"]
    process, err = sigterm_when([sys.executable, str(Path(__file__).parents[2] / "recipes" / "prepare_shards.py"), *args],
                                lambda _: (out / "shard-000000.tar").exists())
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "prepare_shards: interrupted; rerun the same command to resume."
    assert not list(out.glob(".*.part"))
    status, stdout, _ = _run(capsys, *args)
    assert status == 0 and "complete shards kept" in stdout
    # The resumed run lists what an uninterrupted one does: the kept shards' skips too.
    assert _run(capsys, *args[:1], tmp_path / "whole", *args[2:])[0] == 0
    assert (out / "skipped.tsv").read_text() == (tmp_path / "whole" / "skipped.tsv").read_text()


def test_csv_layouts_map_rows_to_files(tmp_path):
    root = tmp_path / "videos"
    paths = synthetic.write_toy_videos(root, 3, seed=1, duration=2.0, frame_size=32)  # cello, clarinet, trumpet
    (root / "cello" / "000000.mp4").rename(root / "abcdefghijk_000030.mp4")
    (root / "clarinet" / "000001.mp4").rename(root / "lmnopqrstuv.mp4")

    def entries(text, **options):
        table = tmp_path / "list.csv"
        table.write_text(text)
        namespace = argparse.Namespace(input=table, video_root=root, layout="auto", split=None)
        vars(namespace).update(options)
        return read_entries(namespace)

    found, missing = entries("abcdefghijk,30,playing cello,train\nlmnopqrstuv,12,clarinet,test\nzzzzzzzzzzz,0,x,train\n")
    assert [(Path(e.path).name, e.file_id, e.label, e.start, e.end) for e in found] == [
        ("abcdefghijk_000030.mp4", "abcdefghijk_000030", "playing cello", 0.0, None),
        ("lmnopqrstuv.mp4", "lmnopqrstuv", "clarinet", 12.0, 22.0),
    ]
    assert missing == [("zzzzzzzzzzz_000000", f"{tmp_path / 'list.csv'}:3: no video named zzzzzzzzzzz_000000 "
                                              f"(nor zzzzzzzzzzz) below {root}.")]
    found, _ = entries("abcdefghijk,30,playing cello,train\nlmnopqrstuv,12,clarinet,test\n", split="test")
    assert [e.file_id for e in found] == ["lmnopqrstuv"]

    found, missing = entries("data/MUSIC/solo/audio/trumpet/000002.wav,data/MUSIC/solo/preprocessed/trumpet/000002,2,trumpet\n")
    assert [(e.path, e.file_id, e.label) for e in found] == [(str(paths[2]), "000002", "trumpet")] and not missing

    # Two videos of one name below the root: neither is taken for the row (one was, silently).
    (root / "again").mkdir()
    (root / "again" / "000002.mp4").write_bytes(paths[2].read_bytes())
    found, missing = entries("data/MUSIC/solo/audio/trumpet/000002.wav,data/MUSIC/solo/preprocessed/trumpet/000002,2,trumpet\n")
    assert not found and missing == [("000002", f"{tmp_path / 'list.csv'}:1: 000002 is the name of 2 videos below "
                                                f"{root} ({root / 'again' / '000002.mp4'}, {paths[2]}); keep one.")]
    found, missing = entries("label,path,start,end\nbrass,trumpet/000002.mp4,0.5,1.5\nnone,nowhere.mp4,,\n")
    assert [(e.file_id, e.label, e.start, e.end) for e in found] == [("000002", "brass", 0.5, 1.5)]
    assert missing == [(str(root / "nowhere.mp4"), "no such file")]
    _, clips, reason = plan_clips(found[0], clip_seconds=0.4, min_seconds=0.2)
    assert reason is None and [(c.start, c.end) for c in clips] == [(0.5, 0.9), (0.9, 1.3)]
    _, clips, reason = plan_clips(found[0], clip_seconds=4.0, min_seconds=2.0)
    assert clips == [] and "shorter than --min-seconds" in reason


def test_a_clip_listed_twice_is_written_once(videos, tmp_path, capsys):
    """Rows that repeat a clip (a row given twice, or another label for it) would write two
    samples of one key: the first is written, the others are listed as skipped."""
    table = tmp_path / "list.csv"
    table.write_text("path,label\ncello/000000.mkv,cello\ncello/000000.mkv,cello\ncello/000000.mkv,strings\n")
    out = tmp_path / "shards"
    status, stdout, _ = _run(capsys, table, out, "--video-root", videos, "--clip-seconds", CLIP, "--short-side", 32)
    assert status == 0 and "wrote 2 clips in 1 shards" in stdout
    with tarfile.open(out / "shard-000000.tar") as tar:
        names = tar.getnames()
        labels = {json.loads(tar.extractfile(n).read())["label"] for n in names if n.endswith(".json")}
    assert len(names) == len(set(names)) and labels == {"cello"}
    skipped = (out / "skipped.tsv").read_text().splitlines()
    assert len(skipped) == 2 and all("is listed more than once; written once (label 'cello')" in line for line in skipped)


def test_clip_model_stores_per_frame_embeddings(videos, tmp_path, capsys):
    from clipcore.query import QueryEncoder

    encoder = QueryEncoder.tiny(seed=0)
    encoder.save_pretrained(tmp_path / "encoder")
    source = tmp_path / "two"
    (source / "a").mkdir(parents=True)
    for video in (videos / "cello" / "000000.mkv", videos / "clarinet" / "000001.mkv"):
        os.link(video, source / "a" / video.name)
    out = tmp_path / "shards"
    status, stdout, _ = _run(capsys, source, out, "--clip-seconds", 3, "--short-side", 64, "--clip-model",
                             tmp_path / "encoder")
    assert status == 0, stdout
    (shard,) = out.glob("*.tar")
    with tarfile.open(shard) as tar:
        tables = {n: np.load(io.BytesIO(tar.extractfile(n).read())) for n in tar.getnames() if n.endswith(".npy")}
    assert tables and all(n.endswith(f".{encoder.name}.npy") for n in tables)
    for name, table in tables.items():
        assert table.dtype == np.float16 and table.shape == (3, encoder.embed_dim)
        video = source / "a" / f"{name.split('/')[1].split('_')[1]}.mkv"
        expected = encoder.encode_image(torch.from_numpy(read_clip(video, short_side=64).frames).permute(0, 3, 1, 2))
        np.testing.assert_allclose(table.astype(np.float32), expected.numpy(), atol=2e-3)
    assert json.loads((out / "plan.json").read_text())["settings"]["clip_model"] == encoder.name


def test_help_and_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0 and "vggsound" in capsys.readouterr().out
    status, _, stderr = _run(capsys, tmp_path / "missing", tmp_path / "out")
    assert status == 2 and "missing: no such file or folder" in stderr and "Traceback" not in stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    status, _, stderr = _run(capsys, empty, tmp_path / "out")
    assert status == 2 and "no usable video files" in stderr
    assert not (tmp_path / "out").exists()
    (empty / "take.MP4").write_bytes(b"a video, given where its folder is wanted")
    status, _, stderr = _run(capsys, empty / "take.MP4", tmp_path / "out")
    assert status == 2 and "take.MP4: is a video; give the folder that holds it, or a CSV file that lists it." in stderr
    # Each option's bad value is named alone, NaN and infinity included.
    for option, value, expected in (("--clip-seconds", "nan", "--clip-seconds must be a positive number of seconds, got nan."),
                                    ("--min-seconds", "0", "--min-seconds must be a positive number of seconds, got 0."),
                                    ("--clip-timeout", "nan", "--clip-timeout must be a positive number of seconds"),
                                    ("--fps", "inf", "--fps must be above 0 and at most 60 frames per second, got inf."),
                                    ("--sample-rate", "10000000", "--sample-rate must be between 1000 and 192000 Hz"),
                                    ("--short-side", "100000", "--short-side must be between 16 and 4096 pixels"),
                                    ("--workers", "0", "--workers must be at least 1, got 0.")):
        status, _, stderr = _run(capsys, empty, tmp_path / "out", option, value)
        lines = stderr.strip().splitlines()
        assert status == 2 and len(lines) == 1 and expected in lines[0], (option, stderr)
        assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("keep me")
    status, _, stderr = _run(capsys, empty, tmp_path / "file")
    assert status == 2 and f"out_dir {tmp_path / 'file'}: is a file, not a folder." in stderr
    assert (tmp_path / "file").read_text() == "keep me"


def test_a_listed_part_must_lie_in_the_video(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes(b"")
    for start, end, expected in (("-3", "1", "'-3' is not a time in the video"), ("inf", "", "'inf' is not a time"),
                                 ("0", "nan", "'nan' is not a time"), ("5", "2", "the end (2 s) is not after the start (5 s)")):
        table = tmp_path / "list.csv"
        table.write_text(f"path,label,start,end\na.mp4,cello,{start},{end}\n")
        with pytest.raises(UsageError, match=rf"list.csv:2: {re.escape(expected)}"):
            read_entries(argparse.Namespace(input=table, video_root=videos, layout="auto", split=None))


def test_videos_whose_ids_would_share_a_key_get_distinct_keys(videos, tmp_path, capsys):
    root = tmp_path / "coll"
    (root / "x").mkdir(parents=True)
    (root / "x" / "good.mkv").write_bytes((videos / "cello" / "000000.mkv").read_bytes())  # id x/good
    (root / "x_good.mkv").write_bytes((videos / "clarinet" / "000001.mkv").read_bytes())  # id x_good
    out = tmp_path / "shards"
    args = [root, out, "--clip-seconds", CLIP, "--shard-size", 3, "--short-side", 32, "--dataset", "coll"]
    status, stdout, _ = _run(capsys, *args)
    assert status == 0 and "wrote 4 clips in 2 shards" in stdout
    members, ids = [], {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members += tar.getnames()
            for name in tar.getnames():
                if name.endswith(".json"):
                    ids[name[: -len(".json")]] = json.loads(tar.extractfile(name).read())["video_id"]
    assert len(members) == len(set(members))  # no member twice, in a shard or across them
    assert len(ids) == 4 and sorted(ids.values()) == ["x/good", "x/good", "x_good", "x_good"]
    assert all(re.fullmatch(r"coll/x_good-[0-9a-f]{8}/(0|1500)", key) for key in ids)
    assert len({key.rsplit("/", 1)[0] for key in ids}) == 2  # one key part per video
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(plan["hashed_keys"]) == sorted({key.split("/")[1] for key in ids})
    # The reader sees four clips, each with its own video's audio.
    stream = ShardStream(sorted(out.glob("*.tar")), num_sources=1, batch_size=4, segment_samples=8000, train=False,
                         query_frames=1, frame_size=32)
    assert sum(len(batch) for batch in stream) == 4 and stream.skipped == 0
    # A rerun keeps the shards; a folder written before keys were made distinct (its plan
    # without hashed_keys, its shards with one key for two videos) is refused, not resumed.
    (out / "shard-000001.tar").unlink()
    status, stdout, _ = _run(capsys, *args)
    assert status == 0 and "wrote 1 clips in 1 shards" in stdout and "(1 complete shards kept)" in stdout
    del plan["hashed_keys"]
    (out / "plan.json").write_text(json.dumps(plan, indent=2) + "\n")
    status, _, stderr = _run(capsys, *args)
    assert status == 2 and "other inputs or settings" in stderr

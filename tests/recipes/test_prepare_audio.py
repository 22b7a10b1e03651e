"""prepare_shards --audio: labelled sound libraries become audio shards whose queries are
their labels' text embeddings, which mix with video shards in one stream."""

import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from clipcore.prompts import CLIPSEP_EVAL_TEMPLATES
from clipcore.query import QueryEncoder
from clipcore.shard_stream import CorruptSampleWarning, ShardStream
from clipcore.shards import ShardError
from clipcore.sound_library import read_library
from clipcore.synthetic import make_clip, write_toy_shards
from recipes.prepare_shards import ClipJob, interleave_labels, main

RATE = 16000


def _wav(path, instrument, seconds=1.1, index=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, make_clip(index, duration=seconds, instrument=instrument).audio, RATE)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("encoder")
    QueryEncoder.tiny(embed_dim=32).save_pretrained(folder)
    return folder


def test_library_folder_to_audio_shards_that_mix_with_video_shards(tmp_path, encoder_dir, capsys):
    _wav(tmp_path / "library" / "cello" / "low_01.wav", "cello", seconds=2.3)
    _wav(tmp_path / "library" / "flute" / "high_01.flac", "flute")
    _wav(tmp_path / "library" / "flute" / "high_02.ogg", "flute", index=1)
    status = main([str(tmp_path / "library"), str(tmp_path / "audio"), "--audio", "--clip-model", str(encoder_dir),
                   "--clip-seconds", "1.1"])
    captured = capsys.readouterr()
    assert status == 0 and "note:" not in captured.err, captured
    with tarfile.open(tmp_path / "audio" / "shard-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    metas = {name: json.loads(data) for name, data in members.items() if name.endswith(".json")}
    assert len(metas) == 4 and not any(name.endswith(".jpg") for name in members)  # 2 + 1 + 1 clips, no frames
    encoder = QueryEncoder.load(str(encoder_dir))
    expected = encoder.encode_text_raw(["cello"], list(CLIPSEP_EVAL_TEMPLATES))[0].numpy()
    for name, meta in metas.items():
        assert meta["embedding"] == "text" and meta["templates"] == list(CLIPSEP_EVAL_TEMPLATES)
        table = np.load(io.BytesIO(members[name.replace(".json", f".{encoder.name}.npy")]))
        assert table.shape == (1, 32)
        if meta["label"] == "cello":
            np.testing.assert_allclose(table[0], expected, rtol=2e-3, atol=2e-3)

    write_toy_shards(tmp_path / "video", 4, shard_size=4, duration=1.1, frame_size=32, encoder=encoder)
    stream = ShardStream([str(tmp_path / "audio" / "*.tar"), str(tmp_path / "video" / "*.tar")], batch_size=4,
                         segment_samples=8191, encoder=encoder.name, train=False)
    (batch,) = list(stream)
    assert batch.embeddings.shape == (4, 2, 32)
    assert batch.text_queries.sum() == 4 and (~batch.text_queries).sum() == 4  # both kinds in one batch

    with pytest.warns(CorruptSampleWarning), pytest.raises(ShardError, match="labelled audio without frames"):
        list(ShardStream(str(tmp_path / "audio" / "*.tar"), batch_size=1, segment_samples=8191, train=False))


def test_labels_from_a_csv_column_or_a_file_name_pattern(tmp_path):
    (tmp_path / "sounds.csv").write_text("path,category\ndog_bark_03.wav,dog\ncar_horn_1.wav,car_horn\n")
    assert [f.label for f in read_library(tmp_path / "sounds.csv", label_column="category")] == ["dog", "car horn"]
    by_name = read_library(tmp_path / "sounds.csv", label_column="none", label_pattern=r"^(?P<label>.+?)_\d+$")
    assert [f.label for f in by_name] == ["dog bark", "car horn"]
    _wav(tmp_path / "lib" / "dog_bark_03.wav", "drum")
    (item,) = read_library(tmp_path / "lib", label_pattern=r"^(.+?)_\d+$")
    assert (item.label, item.file_id) == ("dog bark", "dog_bark_03")
    # Excel's "CSV UTF-8" starts with a byte-order mark: the header is still "path".
    (tmp_path / "excel.csv").write_bytes("path,category\r\ndog_bark_03.wav,dog\r\n".encode("utf-8-sig"))
    assert [f.label for f in read_library(tmp_path / "excel.csv", label_column="category")] == ["dog"]


@pytest.mark.parametrize("case, expected", [
    ("empty", "empty: holds no audio files"),
    ("top", "loose.wav: has no label (its folder is the library's top folder; use --label-pattern)"),
    ("pattern", "does not match --label-pattern"),
    ("blank", "labels.csv:3: has no label"),
    ("no-path", "labels.csv:2: the path cell is empty."),  # the CSV's own folder was probed as audio
    ("twice", "labels.csv:3: lists a.wav again (row 2); give each file once."),  # duplicate tar members
    ("binary", "labels.csv: cannot be read as CSV"),
    ("no-model", "--audio needs --clip-model"),
])
def test_bad_libraries_get_one_line(tmp_path, encoder_dir, capsys, case, expected):
    (tmp_path / "empty").mkdir()
    _wav(tmp_path / "top" / "loose.wav", "bell")
    _wav(tmp_path / "pattern" / "bells" / "bell.wav", "bell")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "labels.csv").write_text("path,label\na.wav,bell\nb.wav, \n")
    (tmp_path / "no-path").mkdir()
    (tmp_path / "no-path" / "labels.csv").write_text("path,label\n,bell\n")
    (tmp_path / "twice").mkdir()
    (tmp_path / "twice" / "labels.csv").write_text("path,label\na.wav,bell\na.wav,chime\n")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "labels.csv").write_bytes(b"path,label\n\xff\xfe\x00bad")
    source = f"{case}/labels.csv" if case in ("blank", "binary", "no-path", "twice") else case
    args = [str(tmp_path / source), str(tmp_path / "out"), "--audio"]
    args += [] if case == "no-model" else ["--clip-model", str(encoder_dir)]
    args += ["--label-pattern", r"^(.+)_\d+$"] if case == "pattern" else []
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prepare_shards: error:") and expected in err[0], err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tar"))


def test_shards_of_a_library_take_labels_in_turn():
    jobs = [ClipJob(f"{label}/{k}.wav", f"{label}{k}", label, 0.0, 1.0) for label in "aab" for k in range(2)]
    assert [job.label for job in interleave_labels(sorted(set(jobs), key=lambda j: j.path))] == ["a", "b", "a", "b"]


def test_a_long_take_is_cut_into_its_clips_and_audio_beyond_full_scale_is_scaled_not_clipped(tmp_path, encoder_dir,
                                                                                                capsys):
    """Each clip of a 44.1 kHz float take holds the take's own samples there (read as a span, resampled), and
    a clip peaking at +6 dBFS keeps its waveform's shape at a lower level, its gain in the JSON."""
    take = np.random.default_rng(3).uniform(-0.5, 0.5, size=44100 * 5).astype(np.float32)
    take[44100 * 3:44100 * 4] *= 4.0  # the fourth second peaks near 2.0 (+6 dBFS)
    (tmp_path / "library" / "violin").mkdir(parents=True)
    sf.write(tmp_path / "library" / "violin" / "take.wav", take, 44100, subtype="FLOAT")
    status = main([str(tmp_path / "library"), str(tmp_path / "audio"), "--audio", "--clip-model", str(encoder_dir),
                   "--clip-seconds", "1.0"])
    err = capsys.readouterr().err
    assert status == 0, err
    # One label: written, with a note that these clips alone make mixtures of one kind.
    assert f"every file of {tmp_path / 'library'} has the label 'violin'" in err and "together with shards" in err
    with tarfile.open(tmp_path / "audio" / "shard-000000.tar") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    from clipcore.audio import load_audio
    whole = load_audio(tmp_path / "library" / "violin" / "take.wav", RATE, mono=True)[0][0].numpy()
    starts = sorted(json.loads(data)["start"] for name, data in members.items() if name.endswith(".json"))
    assert starts == [0.0, 1.0, 2.0, 3.0, 4.0]
    for name, data in members.items():
        if not name.endswith(".json"):
            continue
        meta = json.loads(data)
        audio, _ = sf.read(io.BytesIO(members[name.replace(".json", ".flac")]), dtype="float32")
        expected = whole[int(meta["start"]) * RATE:(int(meta["start"]) + 1) * RATE]
        gain = meta.get("gain", 1.0)
        assert (gain < 0.6) == (meta["start"] == 3.0)
        np.testing.assert_allclose(audio, expected * gain, atol=1e-4)  # 16-bit rounding; no clipped sample

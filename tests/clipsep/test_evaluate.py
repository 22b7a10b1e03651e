"""The evaluation recipe on a miniature data set in the official preprocessing layout."""

import json
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch import nn

from clipcore.query import QueryEncoder
from clipcore.synthetic import make_clip
from clipsep.model import CLIPSep
from clipsep.separate import Separator
from recipes.evaluate_clipsep import SEGMENT, Clip, interference_index, load_segment, main


def _write_clip(root, index, seed, folder, duration=5.0):
    clip = make_clip(index, seed=seed, duration=duration, frame_size=48)
    audio = f"data/{folder}/audio/{clip.label}/{clip.video_id}.wav"
    frames = f"data/{folder}/frames/{clip.label}/{clip.video_id}"
    (root / audio).parent.mkdir(parents=True, exist_ok=True)
    sf.write(root / audio, clip.audio, clip.sample_rate, subtype="PCM_16")
    (root / frames).mkdir(parents=True)
    for k, frame in enumerate(clip.frames, start=1):
        Image.fromarray(frame).save(root / frames / f"{k:06d}.jpg")
    return f"{audio},{frames},{len(clip.frames)},{clip.label}\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    (root / "targets.csv").write_text("".join(_write_clip(root, i, 0, "music") for i in range(3)))
    (root / "interference.csv").write_text("".join(_write_clip(root, i, 1, "vgg", 3.0) for i in range(4)))
    Separator(CLIPSep.tiny(query_dim=32), QueryEncoder.tiny(embed_dim=32)).save_pretrained(root / "model")
    return root


def _args(data, *extra):
    return ["--checkpoint", str(data / "model"), "--data-root", str(data), "--targets", str(data / "targets.csv"),
            "--interference", str(data / "interference.csv"), *extra]


def test_protocol_json_and_table(data, tmp_path, capsys):
    targets = (data / "targets.csv").read_bytes()
    assert main(_args(data, "--out", str(data / "targets.csv"))) == 2  # an input is never an output
    assert "is the input of --targets" in capsys.readouterr().err and (data / "targets.csv").read_bytes() == targets
    # Nor a file of the checkpoint, nor a listed clip's audio (the results replaced them).
    wave = next(data.glob("data/music/audio/*/*.wav"))
    inputs = {path: path.read_bytes() for path in (data / "model" / "config.json", wave)}
    for path, option in ((data / "model" / "config.json", "--checkpoint"), (wave, "--data-root")):
        assert main(_args(data, "--out", str(path))) == 2
        assert option in capsys.readouterr().err
    assert all(path.read_bytes() == before for path, before in inputs.items())
    out = tmp_path / "results.json"
    assert main(_args(data, "--out", str(out))) == 0
    table = capsys.readouterr().out
    assert "mean ± s.e." in table and "ensemble" in table and "sdri" in table
    results = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert len(results["items"]) == 3 and results["skipped"] == []
    lines = (data / "interference.csv").read_text().splitlines()
    for item in results["items"]:
        chosen = lines[random.Random(item["index"]).randint(0, 3)]
        assert chosen.split(",")[0].endswith(item["interference"] + ".wav")
        for mode in ("image", "text", "ensemble"):
            s = item["scores"][mode]
            assert s["sdri"] == pytest.approx(s["sdr"] - s["sdr_mix"], abs=1e-9)
    sdr = [i["scores"]["text"]["sdr"] for i in results["items"]]
    assert results["summary"]["text"]["sdr"]["mean"] == pytest.approx(np.mean(sdr))
    assert results["summary"]["text"]["sdr"]["median"] == pytest.approx(np.median(sdr))


def test_segment_is_centred_on_the_middle_frame_and_short_clips_repeat(data):
    line = (data / "interference.csv").read_text().splitlines()[0].split(",")
    clip = Clip(line[0], line[1], int(line[2]), line[3])  # 3 s, 3 frames: middle frame 1 at 0.5 s
    segment = load_segment(data, clip)
    audio, _ = sf.read(data / clip.audio, dtype="float32")
    tiled = np.tile(audio, SEGMENT // len(audio) + 1)
    centre = 8000
    assert segment.shape == (SEGMENT,)
    assert np.all(segment[: SEGMENT // 2 - centre] == 0)
    np.testing.assert_allclose(segment[SEGMENT // 2 - centre : -1], tiled[: centre + SEGMENT // 2], atol=1e-4)
    assert segment[-1] == 0  # the official crop fills SEGMENT // 2 samples on each side of the centre
    assert interference_index(7, 5) == random.Random(7).randint(0, 4)


def test_missing_files_are_skipped_and_bad_input_is_one_line(data, tmp_path, capsys):
    broken = tmp_path / "targets.csv"
    rows = (data / "targets.csv").read_text().splitlines()
    broken.write_text("\n".join(["data/nowhere/x.wav,data/nowhere/x,5,violin", *rows[:1]]) + "\n")
    out = tmp_path / "r.json"
    args = _args(data, "--queries", "text", "--out", str(out))
    args[args.index("--targets") + 1] = str(broken)
    assert main(args) == 0
    results = json.loads(out.read_text())
    assert len(results["items"]) == 1 and results["skipped"][0]["target"] == "x"
    capsys.readouterr()
    # A list whose only interference is the target itself: skipped (BSS-Eval's references
    # would be equal), and with nothing left to evaluate, one line.
    args[args.index("--interference") + 1] = str(broken.with_name("itself.csv"))
    args[args.index("--targets") + 1] = str(broken.with_name("itself.csv"))
    broken.with_name("itself.csv").write_text(rows[0] + "\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        "evaluate_clipsep: error: no mixture could be evaluated (first problem: "
        f"{rows[0].split(',')[0]}: the interference is the target itself).")
    assert main(_args(data, "--data-root", str(tmp_path / "missing"))) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err and "Traceback" not in err
    for power in (["--mask-power", "2"], ["--soft", "--mask-power", "-1"]):  # binary masks have no power
        assert main(_args(data, *power)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--mask-power" in err and "Traceback" not in err


def test_an_unwritable_out_is_refused_before_the_model_is_loaded(data, tmp_path, capsys):
    (tmp_path / "notes").write_text("a file")
    for out, message in ((tmp_path, f"--out {tmp_path}: is a folder; a file cannot be written there."),
                         (tmp_path / "notes" / "r.json", f"--out {tmp_path / 'notes'}: is a file, not a folder.")):
        args = _args(data, "--out", str(out))
        args[args.index("--checkpoint") + 1] = str(tmp_path / "missing")  # found first, not after the evaluation
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err == f"evaluate_clipsep: error: {message}\n"


def test_soft_masks_to_a_power_reach_the_scores(data, tmp_path):
    torch.manual_seed(0)
    model = CLIPSep.tiny(query_dim=32)
    for module in model.modules():  # far from the official near-zero start, so that masks vary
        if isinstance(module, (nn.Conv2d, nn.Linear)):  # by bin (a constant mask leaves SDR as it is)
            nn.init.kaiming_normal_(module.weight, nonlinearity="linear")
    Separator(model, QueryEncoder.tiny(embed_dim=32)).save_pretrained(tmp_path / "model")
    results = {}
    for power in ("1", "2"):
        out = tmp_path / f"p{power}.json"
        args = _args(data, "--queries", "text", "--soft", "--mask-power", power, "--out", str(out))
        args[args.index("--checkpoint") + 1] = str(tmp_path / "model")
        assert main(args) == 0
        results[power] = json.loads(out.read_text())
    assert results["2"]["settings"]["mask_power"] == 2.0 and results["2"]["settings"]["masks"] == "soft"
    sdr = {p: [i["scores"]["text"]["sdr"] for i in r["items"]] for p, r in results.items()}
    assert len(sdr["1"]) == len(sdr["2"]) == 3 and all(abs(a - b) > 1e-3 for a, b in zip(sdr["1"], sdr["2"]))


def test_unscored_estimates_are_counted_and_a_mode_with_none_scored_fails(data, tmp_path, capsys):
    """Masks that keep nothing give silent estimates, which the official evaluation leaves out: the
    table's n said so only by its count, and a run where nothing was scored exited 0 with a table of NaN."""
    model = CLIPSep.tiny(query_dim=32)
    with torch.no_grad():
        model.mask_scale.zero_()
        model.mask_bias.fill_(-50.0)  # every mask 0
    Separator(model, QueryEncoder.tiny(embed_dim=32)).save_pretrained(tmp_path / "deaf")
    out = tmp_path / "results.json"
    args = ["--checkpoint", str(tmp_path / "deaf"), *_args(data)[2:], "--queries", "image", "--out", str(out)]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "image: 3 of 3 estimates unscored (silent, or the whole mixture)." in captured.out
    assert "every estimate with image queries was unscored" in captured.err
    assert json.loads(out.read_text())["unscored"] == {"image": 3}

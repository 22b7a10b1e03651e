"""The converted official network reproduces the reference outputs of the official code."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clipcore.checkpoint import CheckpointError
from clipcore.spectral import unwarp_to_linear
from clipsep.cli import main
from clipsep.convert import from_official
from clipsep.model import CLIPSep

DATA = Path(__file__).resolve().parents[1] / "data"


def closed_form_state_dict() -> dict[str, torch.Tensor]:
    """The official state dict filled with the closed-form weights of the reference README."""
    spec = json.loads((DATA / "state_dict_keys.json").read_text())
    state = {}
    for entry in spec["keys"]:
        index, full_key, shape = entry["index"], entry["key"], entry["shape"]
        key = full_key.removeprefix("module.")
        n = int(np.prod(shape)) if shape else 1
        wave = np.sin(0.37 * np.arange(n, dtype=np.float64) + 1.3 * index).astype(np.float32).reshape(shape)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        if key.endswith("running_var"):
            value = 1 + 0.5 * np.abs(wave)
        elif key.endswith("running_mean"):
            value = 0.1 * wave
        elif key.endswith("num_batches_tracked"):
            state[full_key] = torch.zeros(shape, dtype=torch.int64)
            continue
        elif len(shape) == 1 and ".weight" in key:
            value = 1 + 0.1 * wave
        elif key.endswith("synth_net.scale"):
            value = 10 * wave
        elif key.startswith("frame_net"):
            value = 3 * wave
        elif key.startswith("pit_nets"):
            value = wave * 4 / np.sqrt(fan_in)
        else:
            value = wave / np.sqrt(fan_in)
        state[full_key] = torch.from_numpy(np.asarray(value, dtype=np.float32).reshape(shape))
    for key, value in spec["overrides"].items():
        state[key] = torch.tensor(value, dtype=state[key].dtype).reshape(state[key].shape)
    return state


@pytest.fixture(scope="module")
def official_state():
    return closed_form_state_dict()


def test_converted_network_reproduces_the_official_outputs(official_state):
    ref = np.load(DATA / "reference_io.npz")
    model = from_official(official_state)
    assert isinstance(model, CLIPSep) and not model.training
    assert sum(p.numel() for p in model.parameters()) == 30_292_771
    mag = torch.from_numpy(ref["mag_mix"])[None, None]
    query = torch.from_numpy(ref["query"])[None]
    with torch.no_grad():
        mask = model.mask_logits(mag, query)
        noise = model.noise_logits(mag, query)
    np.testing.assert_allclose(mask[0, 0].numpy(), ref["mask_logits"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(noise[0, 0].numpy(), ref["noise_logits_0"], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(noise[0, 1].numpy(), ref["noise_logits_1"], atol=1e-4, rtol=1e-4)
    prob = unwarp_to_linear(torch.sigmoid(mask))
    np.testing.assert_allclose(prob[0, 0].numpy(), ref["mask_prob_linear"], atol=1e-4, rtol=1e-4)


def test_cli_converts_a_released_file(official_state, tmp_path, capsys):
    released = tmp_path / "release" / "best_model.pt"
    released.parent.mkdir()
    torch.save(official_state, released)
    (released.parent / "train-args.json").write_text(json.dumps({"n_mix": 2, "layers": 7}))
    assert main(["convert", "official", str(released), "--out", str(tmp_path / "ckpt")]) == 0
    model = CLIPSep.from_pretrained(tmp_path / "ckpt")
    assert model.provenance["train_args"] == {"n_mix": 2, "layers": 7}
    assert model.provenance["query_encoder"] == "ViT-B-32/openai"
    assert model.provenance["query_normalization"] == "none"
    torch.testing.assert_close(model.mask_bias, official_state["module.synth_net.bias"])
    # Again into that folder, or into an empty path (an unset variable): refused, nothing replaced.
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    for out, message in ((tmp_path / "ckpt", "is a folder that is not empty; convert into a new one."),
                         ("", "--out: the path is empty.")):
        assert main(["convert", "official", str(released), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before


def test_bad_checkpoints_are_refused_in_one_sentence(official_state, tmp_path, capsys):
    broken = dict(official_state)
    broken["module.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected extra.weight"):
        from_official(broken)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert main(["convert", "official", str(garbage), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "garbage.pt" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "never unpickled here" in err and "weights_only" not in err  # torch's advice to unpickle is not passed on
    assert not (tmp_path / "out").exists()
    training = tmp_path / "last.ckpt"  # what a training run leaves in checkpoints/: its export is the model
    torch.save({"pytorch-lightning_version": "2.6.6", "state_dict": {"model.mask_bias": torch.zeros(1)}}, training)
    assert main(["convert", "official", str(training), "--out", str(tmp_path / "out")]) == 2
    assert "last.ckpt: is a training checkpoint of Lightning, not a released model" in capsys.readouterr().err


def test_an_official_state_dict_of_the_wrong_ranks_is_one_sentence(tmp_path):
    state = closed_form_state_dict()
    for key, value in (("frame_net.weight", torch.zeros(8)), ("sound_net.unet_block.model.0.weight", torch.tensor(1.0))):
        with pytest.raises(CheckpointError, match="not 2-d and 4-d, so it is not an official CLIPSep state dict"):
            from_official({**state, key: value})  # an IndexError traceback before

import json

import pytest
import torch
from torch import nn

from clipcore.checkpoint import CheckpointError, Pretrained, load_pretrained, read_config


class TinyNet(Pretrained, nn.Module):
    def __init__(self, width: int = 4, layers: tuple = (2, 3), name: str = "tiny"):
        super().__init__()
        self.inp = nn.Linear(width, layers[0])
        self.out = nn.Linear(layers[0], layers[1])
        self.register_buffer("stats", torch.arange(3.0))

    def forward(self, x):
        return self.out(self.inp(x))


class TiedNet(Pretrained, nn.Module):
    def __init__(self, size: int = 3):
        super().__init__()
        self.a = nn.Linear(size, size, bias=False)
        self.b = nn.Linear(size, size, bias=False)
        self.b.weight = self.a.weight


class OtherNet(Pretrained, nn.Module):
    def __init__(self, size: int = 3):
        super().__init__()
        self.lin = nn.Linear(size, size)


def test_round_trip(tmp_path):
    model = TinyNet(width=5, layers=(4, 2))
    model.save_pretrained(tmp_path / "ckpt", provenance={"git_commit": "abc", "step": 7})
    config = read_config(tmp_path / "ckpt")
    assert config["class"] == f"{__name__}.TinyNet"
    assert config["arguments"] == {"width": 5, "layers": [4, 2], "name": "tiny"}
    assert config["format_version"] == 1
    assert {"python", "torch"} <= config["versions"].keys()
    assert config["provenance"] == {"git_commit": "abc", "step": 7}
    loaded = TinyNet.from_pretrained(tmp_path / "ckpt")
    x = torch.randn(2, 5)
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.stats, model.stats)
    assert loaded.provenance["step"] == 7
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]


def test_generic_loader_and_tied_weights(tmp_path):
    model = TiedNet()
    model.save_pretrained(tmp_path)
    loaded = load_pretrained(tmp_path)
    assert isinstance(loaded, TiedNet)
    assert torch.equal(loaded.b.weight, model.a.weight)
    assert loaded.b.weight is loaded.a.weight


def test_wrong_class_names_both(tmp_path):
    TinyNet().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"holds a .*TinyNet checkpoint, not a .*OtherNet"):
        OtherNet.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"not a .*OtherNet"):
        load_pretrained(tmp_path, expected=OtherNet)


def test_missing_and_truncated_weights(tmp_path):
    TinyNet().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        TinyNet.from_pretrained(tmp_path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="has no weights file model.safetensors"):
        TinyNet.from_pretrained(tmp_path)


def test_a_device_torch_lacks_or_this_machine_lacks_is_named_not_called_corrupt(tmp_path):
    TinyNet().save_pretrained(tmp_path)  # "model.safetensors: is truncated or corrupt (device tpu is invalid)" before
    with pytest.raises(CheckpointError, match="onto device 'tpu': torch has no such device"):
        TinyNet.from_pretrained(tmp_path, map_location="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CheckpointError, match="onto device 'cuda:0': this machine has none"):
            TinyNet.from_pretrained(tmp_path, map_location="cuda:0")


def test_not_a_checkpoint_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        TinyNet.from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="has no config.json"):
        TinyNet.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        TinyNet.from_pretrained(tmp_path)


def test_edited_configs_are_refused_in_one_sentence(tmp_path):
    TinyNet().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for edit, expected in (({"class": 5}, "not a checkpoint config"), ({"arguments": [1]}, "not a checkpoint config"),
                           ({"arguments": {"width": -3}}, r"cannot build a TinyNet from its arguments \(.*\)\.$"),
                           ({"arguments": {"width": "seven"}}, r"cannot build a TinyNet from its arguments"),
                           ({"arguments": {"layers": []}}, r"cannot build a TinyNet from its arguments"),  # IndexError
                           ({"format_version": "1"}, "format_version must be a whole number, not '1'")):
        (tmp_path / "config.json").write_text(json.dumps({**config, **edit}))
        with pytest.raises(CheckpointError, match=expected):
            TinyNet.from_pretrained(tmp_path)
        with pytest.raises(CheckpointError, match=expected):
            load_pretrained(tmp_path)


def test_weights_holding_nan_or_infinity_are_never_saved(tmp_path):
    net = TinyNet()
    with torch.no_grad():
        net.out.bias[1] = float("nan")
    with pytest.raises(CheckpointError, match=r"refusing to save a TinyNet whose weights hold NaN or infinity "
                                              r"\(1 tensors, out.bias the first\)"):
        net.save_pretrained(tmp_path / "diverged")
    assert not (tmp_path / "diverged").exists()


def test_foreign_class_is_never_imported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"class": "subprocess.Popen", "arguments": {}}))
    with pytest.raises(CheckpointError, match="not a model of this project"):
        load_pretrained(tmp_path)


def test_weights_that_do_not_fit(tmp_path):
    TinyNet(width=5).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["arguments"]["width"] = 6
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="does not fit TinyNet"):
        TinyNet.from_pretrained(tmp_path)


def test_arguments_of_a_newer_version_are_named(tmp_path):
    TinyNet().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["arguments"]["zero_terminal_snr"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json gives TinyNet arguments .*\(zero_terminal_snr\).*newer version"):
        TinyNet.from_pretrained(tmp_path)


def test_unstorable_argument_is_refused():
    class Bad(Pretrained, nn.Module):
        def __init__(self, thing: object = None):
            super().__init__()

    with pytest.raises(TypeError, match="Bad.thing"):
        Bad(thing=object())


def test_presets_leave_the_global_random_state_and_retired_seed_arguments_still_load(tmp_path):
    from clipcore.prior import DiffusionPrior
    from clipcore.query import QueryEncoder

    state = torch.random.get_rng_state()
    first, again, other = QueryEncoder.tiny(seed=3), QueryEncoder.tiny(seed=3), QueryEncoder.tiny(seed=4)
    prior = DiffusionPrior.tiny(seed=3)
    assert torch.equal(state, torch.random.get_rng_state())
    weights = lambda module: torch.cat([p.flatten() for p in module.parameters()])  # noqa: E731
    assert torch.equal(weights(first), weights(again)) and not torch.equal(weights(first), weights(other))
    for model, kind in ((first, QueryEncoder), (prior, DiffusionPrior)):
        folder = model.save_pretrained(tmp_path / kind.__name__)
        config = json.loads((folder / "config.json").read_text())
        assert "seed" not in config["arguments"]
        config["arguments"]["seed"] = 3  # as checkpoints written before presets held it
        (folder / "config.json").write_text(json.dumps(config))
        assert torch.equal(weights(kind.from_pretrained(folder)), weights(model))
    state = torch.random.get_rng_state()
    QueryEncoder.from_pretrained(tmp_path / "QueryEncoder")
    assert torch.equal(state, torch.random.get_rng_state())

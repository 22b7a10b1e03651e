"""CLIPSonic fine-tuning: init_from an export keeps its weights, statistics and query encoder."""

import pytest
import torch

from clipcore.checkpoint import CheckpointError
from clipcore.query import QueryEncoder
from clipsonic.system import CLIPSonicSystem


def test_init_from_an_export_keeps_weights_statistics_and_encoder(tmp_path):
    QueryEncoder.tiny(embed_dim=32).save_pretrained(tmp_path / "encoder")
    trained = CLIPSonicSystem(preset="tiny", query_encoder=str(tmp_path / "encoder"))
    with torch.no_grad():
        for parameter in trained.ema.parameters():
            parameter.add_(0.01)  # weights no fresh model has
    trained.export(tmp_path / "export")
    system = CLIPSonicSystem(init_from=str(tmp_path / "export"), freeze=["unet.down_blocks.0"])
    for name, value in trained.ema.state_dict().items():
        assert torch.equal(system.model.state_dict()[name], value), name
    assert bool(system.stats_ready) and system.encoder_spec == str(tmp_path / "export" / "query_encoder")
    frozen = [p for n, p in system.model.named_parameters() if n.startswith("unet.down_blocks.0.")]
    assert frozen and not any(p.requires_grad for p in frozen)
    optimized = {id(p) for group in system.configure_optimizers()["optimizer"].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in frozen}


def test_init_from_another_kind_of_checkpoint_is_refused(tmp_path):
    QueryEncoder.tiny(embed_dim=32).save_pretrained(tmp_path / "encoder")
    with pytest.raises(CheckpointError, match="QueryEncoder checkpoint, not a clipsonic.model.CLIPSonic"):
        CLIPSonicSystem(init_from=str(tmp_path / "encoder"))

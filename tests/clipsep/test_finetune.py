"""Fine-tuning CLIPSep from a checkpoint: the official release's weights keep their raw
text-query convention, frozen parts stay as they were, and bad checkpoints get one line."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipcore.checkpoint import CheckpointError, load_pretrained
from clipcore.query import QueryEncoder
from clipcore.shard_stream import MixBatch
from clipsep.convert import from_official
from clipsep.model import CLIPSep
from clipsep.separate import Separator
from clipsep.system import CLIPSepSystem
from tests.clipsep.test_convert import closed_form_state_dict

ROOT = Path(__file__).resolve().parents[2]
PAPER_SEGMENT = 32767  # 128 STFT frames: one block of the paper's 7-level U-Net


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """The official fixture's weights saved as the release saves them (a state dict file)."""
    path = tmp_path_factory.mktemp("official") / "best_model.pt"
    torch.save(closed_form_state_dict(), path)
    return path


def _text_batch(dim: int, text: bool = True) -> MixBatch:
    """One mixture of two noise sources, with raw-scale (norm about 8) query embeddings."""
    generator = torch.Generator().manual_seed(0)
    sources = 0.1 * torch.randn(1, 2, PAPER_SEGMENT, generator=generator)
    embeddings = 8 * torch.nn.functional.normalize(torch.randn(1, 2, dim, generator=generator), dim=-1)
    return MixBatch(sources.sum(1), sources, embeddings, None, [["a", "b"]], [["a", "b"]],
                    text_queries=torch.full((1, 2), text))


def test_official_checkpoint_fine_tunes_on_raw_text_queries_with_a_frozen_encoder(official_file, tmp_path):
    system = CLIPSepSystem(init_from=str(official_file), freeze=["input_norm", "down"])
    reference = from_official(closed_form_state_dict())
    for name, value in reference.state_dict().items():
        assert torch.equal(system.model.state_dict()[name], value), name
    assert system.raw_queries and system.query_encoder == "ViT-B-32/openai"

    batch = _text_batch(system.model.query_dim)
    queries = system.queries(batch)
    assert torch.equal(queries, batch.embeddings)  # raw, not normalized
    before = {name: value.clone() for name, value in system.model.state_dict().items()}
    # As Lightning (2.6) trains: it never calls the system's train(), and keeps each module's
    # mode as it finds it, so the frozen parts must be in eval mode from the start.
    optimizer = system.configure_optimizers()["optimizer"]
    loss = system.loss_terms(system.outputs(batch))["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    after = system.model.state_dict()
    frozen = [n for n in after if n.startswith(("input_norm.", "down."))]
    trained = [n for n in after if n.startswith(("up.", "query_proj."))]
    assert frozen and all(torch.equal(after[n], before[n]) for n in frozen)  # weights and BatchNorm statistics
    assert any(not torch.equal(after[n], before[n]) for n in trained)

    system.export(tmp_path / "export")
    model = load_pretrained(tmp_path / "export", expected=CLIPSep)
    assert model.provenance["query_normalization"] == "none"
    assert model.provenance["init_from"] == str(official_file)
    separator = Separator(model, QueryEncoder.tiny(embed_dim=512))
    assert separator.queries.normalize_queries is False  # still answers text as the official model did


def test_raw_query_checkpoint_refuses_image_embeddings(official_file):
    system = CLIPSepSystem(init_from=str(official_file))
    with pytest.raises(ValueError, match="query_normalization: none"):
        system.queries(_text_batch(512, text=False))


def test_project_checkpoint_keeps_unit_queries_and_its_query_encoder(tmp_path):
    QueryEncoder.tiny(embed_dim=32).save_pretrained(tmp_path / "encoder")
    trained = CLIPSepSystem(preset="tiny", model_args={"layers": 5}, query_encoder=str(tmp_path / "encoder"))
    trained.export(tmp_path / "run")
    system = CLIPSepSystem(init_from=str(tmp_path / "run"))
    assert not system.raw_queries and system.query_encoder == str(tmp_path / "run" / "query_encoder")
    batch = _text_batch(32)
    assert torch.allclose(system.queries(batch).norm(dim=-1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="32-d queries"):
        system.queries(_text_batch(512))


def _recipe(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "recipes" / "train_clipsep.py"), "fit", *args,
               "--trainer.fast_dev_run", "true", "--data.train_shards", "nothing.tar"]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_bad_checkpoints_get_one_line(tmp_path):
    QueryEncoder.tiny(embed_dim=32).save_pretrained(tmp_path / "encoder")
    torch.save({"module.frame_net.weight": torch.zeros(32, 512),
                "module.sound_net.unet_block.model.0.weight": torch.zeros(64, 1, 4, 4)}, tmp_path / "small.pt")
    cases = {  # through the recipe: a checkpoint of the wrong kind, and one of the wrong size
        str(tmp_path / "encoder"): "QueryEncoder checkpoint, not a clipsep.model.CLIPSep",
        str(tmp_path / "small.pt"): "small.pt: the state dict does not",
    }
    for init_from, expected in cases.items():
        result = _recipe("--model.init_from", init_from)
        errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert len(errors) == 1 and errors[0].startswith("train_clipsep: error:") and expected in errors[0], errors
    (tmp_path / "notes.pt").write_text("not weights")
    for init_from, expected in {"notes.pt": "notes.pt: is not a PyTorch weights file",
                                "missing": "missing: no such checkpoint folder or file"}.items():
        with pytest.raises(CheckpointError, match=expected):
            CLIPSepSystem(init_from=str(tmp_path / init_from))
    CLIPSep.tiny().save_pretrained(tmp_path / "tiny")
    with pytest.raises(CheckpointError, match="no part named 'unet.encoder' .its parts: input_norm, down, up"):
        CLIPSepSystem(init_from=str(tmp_path / "tiny"), freeze=["unet.encoder"])

"""README: ``ARCH/TAG=FILE`` loads OpenAI weights from a local file with the tag's QuickGELU,
preprocessing and name (``clip-vit-b-32-openai``, the ``<name>.npy`` the paper configs
read); plain ``ARCH=FILE`` loads them without QuickGELU.

A real ViT-B/32 or ViT-L/14 is too large for the test machine, so the architecture's
config is replaced by the small test CLIP; everything else is open_clip's own: the real
``openai`` tag settings (QuickGELU, mean, std), its tokenizer and checkpoint loading. The
reference embeddings come from an ``open_clip.CLIP`` built directly, not through the
project.
"""

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file

import clipcore.query as query
from clipcore.query import QueryEncoder, tiny_clip_config

TEXTS = ["violin", "a dog barking"]


@pytest.fixture
def small_architectures(monkeypatch):
    """ViT-B-32 and ViT-L-14 built at the test CLIP's size."""
    real = query.get_model_config

    def config(arch):
        return copy.deepcopy(tiny_clip_config()) if arch in ("ViT-B-32", "ViT-L-14") else real(arch)

    monkeypatch.setattr(query, "get_model_config", config)


def _openai_like_weights(tmp_path, seed=0):
    """A CLIP with QuickGELU, as OpenAI's weights expect, and its weights file."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(**tiny_clip_config(), quick_gelu=True).eval()
    path = tmp_path / "open_clip_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _reference_text(model, texts):
    tokens = open_clip.get_tokenizer("ViT-B-32", context_length=32)(texts)
    with torch.no_grad():
        return F.normalize(model.encode_text(tokens), dim=-1)


@pytest.mark.parametrize("arch, name", [("ViT-B-32", "clip-vit-b-32-openai"), ("ViT-L-14", "clip-vit-l-14-openai")])
def test_arch_tag_file_keeps_quick_gelu_and_the_tag_name(small_architectures, tmp_path, arch, name):
    model, weights = _openai_like_weights(tmp_path)
    encoder = QueryEncoder.load(f"{arch}/openai={weights}")
    assert encoder.name == name
    assert any(isinstance(m, QuickGELU) for m in encoder.model.modules())
    expected = _reference_text(model, TEXTS)
    torch.testing.assert_close(encoder.encode_text(TEXTS, templates="{}"), expected, atol=1e-5, rtol=1e-4)
    # The tag's preprocessing: OpenAI's mean and standard deviation.
    tag = open_clip.pretrained.get_pretrained_cfg(arch, "openai")
    torch.testing.assert_close(encoder.pixel_mean.flatten(), torch.tensor(tag["mean"]))
    torch.testing.assert_close(encoder.pixel_std.flatten(), torch.tensor(tag["std"]))
    # It saves and loads as a project checkpoint with QuickGELU still on.
    encoder.save_pretrained(tmp_path / "saved")
    again = QueryEncoder.load(tmp_path / "saved")
    assert again.name == name and any(isinstance(m, QuickGELU) for m in again.model.modules())
    torch.testing.assert_close(again.encode_text(TEXTS, templates="{}"), expected, atol=1e-5, rtol=1e-4)


def test_plain_arch_file_loads_without_quick_gelu(small_architectures, tmp_path):
    model, weights = _openai_like_weights(tmp_path)
    plain = QueryEncoder.load(f"ViT-B-32={weights}")
    assert not any(isinstance(m, QuickGELU) for m in plain.model.modules())
    assert plain.name == "clip-vit-b-32-open-clip-pytorch-model"
    # Same weights, other activation: other embeddings (what the README warns about).
    assert not torch.allclose(plain.encode_text(TEXTS, templates="{}"), _reference_text(model, TEXTS), atol=1e-3)

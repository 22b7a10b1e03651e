import pytest
import torch

from clipsep.model import CLIPSep


def _params(model):
    return sum(p.numel() for p in model.parameters())


def test_paper_parameter_count_matches_official():
    # The official CLIPPITSepV4 (n_mix=2, layers=7, channels=32) state dict holds
    # 30,292,771 parameters including its two noise heads (Linear(32, 32) each).
    assert _params(CLIPSep.paper(noise_heads=2)) == 30_292_771
    assert _params(CLIPSep.paper(noise_heads=0)) == 30_292_771 - 2 * (32 * 32 + 32)


def test_shapes_and_one_unet_pass_for_k_queries():
    model = CLIPSep.tiny(query_dim=16).eval()
    mag = torch.rand(2, 1, 513, 128)
    queries = torch.randn(2, 3, 16)
    passes = []
    model.down[0].register_forward_hook(lambda *_: passes.append(1))
    with torch.no_grad():
        joint = model.mask_logits(mag, queries)
    assert len(passes) == 1  # three queries, one pass through the U-Net
    with torch.no_grad():
        single = torch.cat([model.mask_logits(mag, queries[:, k]) for k in range(3)], dim=1)
        mask, noise = model(mag, queries)
    assert joint.shape == (2, 3, 256, 128)
    assert model.mask_logits(mag, queries[:, 0]).shape == (2, 1, 256, 128)
    assert noise.shape == (2, 2, 256, 128)
    assert model.noise_logits(mag, queries).shape == (2, 2, 256, 128)
    torch.testing.assert_close(joint, single, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mask, joint)
    assert not torch.equal(joint[:, 0], joint[:, 1])


def test_plain_model_has_no_noise_heads_and_bad_shapes_are_refused():
    model = CLIPSep.tiny(query_dim=8, noise_heads=0)
    mag = torch.rand(1, 1, 513, 128)
    assert model.noise_logits(mag, torch.randn(1, 8)).shape == (1, 0, 256, 128)
    with pytest.raises(ValueError, match="multiple of 128"):
        model.mask_logits(torch.rand(1, 1, 513, 100), torch.randn(1, 8))
    with pytest.raises(ValueError, match="queries must be"):
        model.mask_logits(mag, torch.randn(1, 9))


def test_round_trip_and_attributes(tmp_path):
    model = CLIPSep.tiny(seed=3).eval()
    assert model.query_dim == 32 and model.sample_rate == 16000 and model.segment_samples == 65535
    assert model.stft.n_fft == 1024 and model.stft.hop_length == 256
    model.save_pretrained(tmp_path)
    loaded = CLIPSep.from_pretrained(tmp_path).eval()
    mag, query = torch.rand(1, 1, 513, 128), torch.randn(1, 32)
    with torch.no_grad():
        assert torch.equal(loaded.mask_logits(mag, query), model.mask_logits(mag, query))
    assert torch.equal(CLIPSep.tiny(seed=3).query_proj.weight, model.query_proj.weight)
    assert not torch.equal(CLIPSep.tiny(seed=4).query_proj.weight, model.query_proj.weight)


def test_query_scale_multiplies_the_queries_and_survives_a_round_trip(tmp_path):
    scaled, plain = CLIPSep.tiny(seed=5, query_scale=4.0).eval(), CLIPSep.tiny(seed=5).eval()
    mag, query = torch.rand(1, 1, 513, 128), torch.nn.functional.normalize(torch.randn(1, 2, 32), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(scaled(mag, query)[0], plain(mag, 4.0 * query)[0])
        assert not torch.allclose(scaled(mag, query)[0], plain(mag, query)[0])
    scaled.save_pretrained(tmp_path)
    loaded = CLIPSep.from_pretrained(tmp_path).eval()
    assert loaded.query_scale == 4.0
    with torch.no_grad():
        assert torch.equal(loaded.mask_logits(mag, query), scaled.mask_logits(mag, query))
    with pytest.raises(ValueError, match="query_scale must be positive"):
        CLIPSep.tiny(query_scale=0.0)


def test_pytorch_init_is_larger_than_the_official_one():
    official, default = CLIPSep.tiny(seed=0), CLIPSep.tiny(seed=0, init="pytorch")
    assert float(official.up[0].conv.weight.detach().std()) == pytest.approx(1e-3, rel=0.2)
    assert float(official.query_proj.weight.detach().std()) == pytest.approx(1e-4, rel=0.2)
    assert float(default.up[0].conv.weight.detach().std()) > 0.03  # Kaiming-uniform: 1 / sqrt(3 * 144)
    assert float(default.query_proj.weight.detach().std()) > 0.05  # 1 / sqrt(3 * 32)
    with pytest.raises(ValueError, match="init must be"):
        CLIPSep.tiny(init="xavier")

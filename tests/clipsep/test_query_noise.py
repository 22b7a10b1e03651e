"""Noise injection on CLIPSep's queries in training (``query_noise``)."""

import pytest
import torch

from clipcore.shard_stream import MixBatch
from clipsep.system import CLIPSepSystem

TINY = {"layers": 5, "noise_heads": 0}


def _batch(dim: int) -> MixBatch:
    sources = torch.randn(2, 2, 16383, generator=torch.Generator().manual_seed(0))
    embeddings = torch.randn(2, 2, dim, generator=torch.Generator().manual_seed(1))
    return MixBatch(mixture=sources.sum(1), sources=sources, embeddings=embeddings, frames=None,
                    labels=[["a", "b"]] * 2, keys=[["k", "k"]] * 2)


def test_training_queries_are_noisy_unit_vectors_near_the_clean_ones_and_evaluation_is_clean():
    torch.manual_seed(0)
    system = CLIPSepSystem(preset="tiny", model_args=TINY, query_noise=0.1)
    batch = _batch(system.model.query_dim)
    clean = torch.nn.functional.normalize(batch.embeddings, dim=-1)
    assert torch.equal(system.eval().queries(batch), clean)
    noisy = system.train().queries(batch)
    assert torch.allclose(noisy.norm(dim=-1), torch.ones(2, 2), atol=1e-5)
    similarity = (noisy * clean).sum(-1)
    assert bool((similarity < 0.999).all()) and bool((similarity > 0.5).all())
    assert not torch.equal(noisy, system.queries(batch))  # fresh noise at every step


def test_without_noise_training_queries_are_the_clean_ones():
    system = CLIPSepSystem(preset="tiny", model_args=TINY).train()
    batch = _batch(system.model.query_dim)
    assert torch.equal(system.queries(batch), torch.nn.functional.normalize(batch.embeddings, dim=-1))


@pytest.mark.parametrize("arguments", [{"query_noise": -0.1}, {"query_noise": 0.1, "query_mode": "pit"}])
def test_query_noise_is_refused_where_it_cannot_apply(arguments):
    with pytest.raises(ValueError, match="query_noise"):
        CLIPSepSystem(preset="tiny", model_args=TINY, **arguments)

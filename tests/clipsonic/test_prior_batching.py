"""Prior mode: a prompt's condition does not depend on the other prompts of the call."""

import pytest
import torch

from clipcore.prior import DiffusionPrior, PriorError
from clipcore.query import QueryEncoder
from clipsonic.generate import Generator
from clipsonic.model import CLIPSonic
from tests.clipsonic.helpers import unit_vectors

PROMPTS = ["a flute", "a drum", "a cello", "a bell"]


@pytest.fixture(scope="module")
def generator(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clipsonic")
    CLIPSonic.tiny(seed=0).save_pretrained(folder)
    QueryEncoder.tiny(seed=0).save_pretrained(folder / "query_encoder")
    prior = DiffusionPrior.tiny(seed=0)
    with torch.no_grad():  # a null condition unlike the text, so guidance matters as after training
        prior.null_embedding.normal_(generator=torch.Generator().manual_seed(3))
    prior.save_pretrained(folder / "prior")
    return Generator.from_pretrained(folder)


@pytest.mark.parametrize("position", [1, 3])
def test_a_prompt_gets_the_same_prior_condition_at_any_position(generator, position):
    alone = generator.embed(text=PROMPTS[position], mode="pd", seed=4)
    together = generator.embed(text=PROMPTS, mode="pd", seed=4)
    # Batched attention differs from a single row only in the last bits.
    torch.testing.assert_close(together[position : position + 1], alone, atol=1e-5, rtol=0)
    # The same prompt repeated in one call gets one condition (a different seed another one).
    repeated = generator.embed(text=[PROMPTS[0], PROMPTS[position], PROMPTS[position]], mode="pd", seed=4)
    torch.testing.assert_close(repeated[1], repeated[2], atol=1e-5, rtol=0)
    other_seed = generator.embed(text=PROMPTS[position], mode="pd", seed=5)
    assert not torch.allclose(other_seed, alone, atol=1e-3)


@pytest.mark.parametrize("position", [1, 3])
def test_prior_rows_with_their_own_generators_do_not_depend_on_the_batch(position):
    prior = DiffusionPrior.tiny(seed=0)
    text = unit_vectors(4, seed=2)
    streams = [torch.Generator().manual_seed(10 + row) for row in range(4)]
    batch = prior.sample(text, steps=5, generator=streams)
    alone = prior.sample(text[position : position + 1], steps=5, generator=[torch.Generator().manual_seed(10 + position)])
    torch.testing.assert_close(batch[position : position + 1], alone, atol=1e-5, rtol=0)
    with pytest.raises(PriorError, match="3 random generators for 4"):
        prior.sample(text, steps=5, generator=streams[:3])


def test_a_seed_gives_each_row_the_stream_it_would_have_alone():
    prior = DiffusionPrior.tiny(seed=0)
    text = unit_vectors(3, seed=2)
    seeded = prior.sample(text, steps=5, seed=7)
    streams = [torch.Generator().manual_seed(7) for _ in range(3)]
    torch.testing.assert_close(seeded, prior.sample(text, steps=5, generator=streams), atol=0, rtol=0)
    torch.testing.assert_close(seeded[2:], prior.sample(text[2:], steps=5, seed=7), atol=1e-5, rtol=0)
    assert not torch.allclose(seeded, prior.sample(text, steps=5, seed=8), atol=1e-3)
    with pytest.raises(PriorError, match="a seed or random generators, not both"):
        prior.sample(text, steps=5, seed=7, generator=torch.Generator().manual_seed(7))

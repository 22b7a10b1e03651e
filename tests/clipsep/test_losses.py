"""The vectorised losses against brute-force enumeration written out term by term."""

import itertools
import math

import pytest
import torch

from clipsep.losses import (
    assignments,
    mask_loss,
    noise_activation_penalty,
    noise_invariant_loss,
    separation_targets,
    weighted_bce,
)


def _bce(prob, target, weight):
    total = 0.0
    for p, t, w in zip(prob.flatten().tolist(), target.flatten().tolist(), weight.flatten().tolist()):
        log_p = max(math.log(p), -100) if p > 0 else -100
        log_q = max(math.log(1 - p), -100) if p < 1 else -100
        total += -(t * log_p + (1 - t) * log_q) * w
    return total / prob.numel()


def _brute_force(mask_logits, noise_logits, targets, weight, margin_weight, margin):
    batch, sources, heads = mask_logits.shape[0], mask_logits.shape[1], noise_logits.shape[1]
    losses = []
    for b in range(batch):
        best = math.inf
        for heads_of in itertools.permutations(range(heads), sources):
            total = 0.0
            for i, j in enumerate(heads_of):
                q, n = torch.sigmoid(mask_logits[b, i]), torch.sigmoid(noise_logits[b, j])
                both = _bce(torch.clamp(q + n, max=1.0), targets[b, i], weight[b, 0])
                alone = _bce(n, targets[b, i], weight[b, 0])
                total += both + margin_weight * max(0.0, both - alone + margin)
            best = min(best, total / sources)
        losses.append(best)
    return torch.tensor(losses)


@pytest.mark.parametrize("sources,heads,margin_weight", [(2, 2, 0.0), (2, 3, 0.5), (3, 3, 0.0), (1, 2, 1.0)])
def test_noise_invariant_loss_matches_brute_force(sources, heads, margin_weight):
    gen = torch.Generator().manual_seed(sources * 10 + heads)
    shape = (3, sources, 5, 4)
    mask_logits = 3 * torch.randn(shape, generator=gen)
    noise_logits = 3 * torch.randn((3, heads, 5, 4), generator=gen)
    noise_logits[0, 0, 0, 0] = 40.0  # saturates: exercises the clamp of log terms at -100
    targets = (torch.rand(shape, generator=gen) > 0.5).float()
    weight = torch.rand((3, 1, 5, 4), generator=gen) * 3
    loss, best = noise_invariant_loss(mask_logits, noise_logits, targets, weight, margin_weight, margin=0.05)
    expected = _brute_force(mask_logits, noise_logits, targets, weight, margin_weight, 0.05)
    torch.testing.assert_close(loss, expected.float(), rtol=1e-5, atol=1e-5)
    assert best.shape == (3, sources)
    assert len(assignments(sources, heads)) == math.perm(heads, sources)


def test_the_best_assignment_follows_the_noise():
    # Source 0's target is explained only by noise head 1, source 1's only by head 0.
    targets = torch.zeros(1, 2, 4, 4)
    targets[0, 0, :2] = 1
    targets[0, 1, 2:] = 1
    noise = torch.full((1, 2, 4, 4), -20.0)
    noise[0, 1, :2] = 20.0
    noise[0, 0, 2:] = 20.0
    queries = torch.full((1, 2, 4, 4), -20.0)
    loss, best = noise_invariant_loss(queries, noise, targets, torch.ones(1, 1, 4, 4))
    assert best.tolist() == [[1, 0]]
    assert loss.item() < 1e-6


def test_mask_loss_and_penalty_and_targets():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, 3, generator=gen)
    targets = (torch.rand(2, 2, 3, 3, generator=gen) > 0.5).float()
    weight = torch.rand(2, 1, 3, 3, generator=gen)
    expected = [
        sum(_bce(torch.sigmoid(logits[b, i]), targets[b, i], weight[b, 0]) for i in range(2)) / 2 for b in range(2)
    ]
    torch.testing.assert_close(mask_loss(logits, targets, weight), torch.tensor(expected), rtol=1e-5, atol=1e-6)
    noise = torch.zeros(2, 2, 3, 3)  # sigmoid 0.5 each: activation 1.0
    assert noise_activation_penalty(noise, 0.25).item() == pytest.approx(0.75)
    assert noise_activation_penalty(noise - 30, 0.25).item() == 0.0
    mix = torch.rand(2, 1, 513, 8) + 0.1
    sources = torch.cat([0.8 * mix, 0.2 * mix], dim=1)
    tgt, w = separation_targets(mix, sources)
    assert tgt.shape == (2, 2, 256, 8) and w.shape == (2, 1, 256, 8)
    assert tgt[:, 0].min() == 1 and tgt[:, 1].max() == 0
    assert 1e-3 <= w.min() and w.max() <= 10
    assert torch.isfinite(weighted_bce(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]), torch.ones(1, 2))).all()


def test_too_few_heads_is_refused():
    with pytest.raises(ValueError, match="at least as many noise heads"):
        noise_invariant_loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2), torch.ones(1, 1, 2, 2))


def test_gradients_stay_finite_at_saturated_masks():
    mask_logits = torch.tensor([[[[60.0, -60.0], [0.0, 30.0]]]], requires_grad=True)
    noise_logits = torch.tensor([[[[60.0, -60.0], [-60.0, 0.0]]]] * 1).repeat(1, 2, 1, 1).requires_grad_(True)
    targets = torch.tensor([[[[0.0, 1.0], [1.0, 0.0]]]])
    weight = torch.ones(1, 1, 2, 2)
    loss, _ = noise_invariant_loss(mask_logits, noise_logits, targets, weight)
    (loss.sum() + mask_loss(mask_logits, targets, weight).sum()).backward()
    assert torch.isfinite(loss).all()
    assert torch.isfinite(mask_logits.grad).all() and torch.isfinite(noise_logits.grad).all()

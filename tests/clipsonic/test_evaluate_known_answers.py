"""``recipes/evaluate_clipsonic.py`` on a case whose answers are known beforehand.

The generator is replaced by one that returns, for each condition, a copy of the
reference clip whose CLIP embedding it is (what a perfect image-conditioned model would
do). The evaluation under test (reference loading, audio embeddings, neighbours, FAD,
relevance, k-NN accuracy, their aggregation per mode) runs unchanged. With copies:

- every clip's nearest reference is itself, so k-NN accuracy (k = 1) is 1;
- its relevance is the cosine of its label's text embedding with its own CLIP embedding;
- the generated set equals the reference set, so the Fréchet distance is 0.
"""

import torch
import torch.nn.functional as F

import recipes.evaluate_clipsonic as recipe
from clipcore import synthetic
from clipcore.query import QueryEncoder
from clipsonic.generate import Generation, Generator
from clipsonic.model import CLIPSonic


def test_copies_of_the_references_give_the_known_scores(tmp_path, monkeypatch):
    encoder = QueryEncoder.tiny(seed=0)
    synthetic.write_toy_shards(tmp_path / "shards", 16, seed=0, encoder=encoder, duration=1.0, frame_size=32)
    checkpoint = tmp_path / "ckpt"
    CLIPSonic.tiny(seed=0).save_pretrained(checkpoint)
    encoder.save_pretrained(checkpoint / "query_encoder")

    loaded = {}
    load_references = recipe.load_references

    def remember(*args, **kwargs):
        loaded["audio"], loaded["clip"], loaded["labels"] = load_references(*args, **kwargs)
        return loaded["audio"], loaded["clip"], loaded["labels"]

    def copies(self, embeddings, num_samples=1, **settings):
        rows = (F.normalize(embeddings, dim=-1) @ loaded["clip"].T).argmax(1)  # the clip each condition is
        waves = loaded["audio"][rows][:, None].expand(-1, num_samples, -1)
        return Generation(waves, None, embeddings, 16000)

    monkeypatch.setattr(recipe, "load_references", remember)
    monkeypatch.setattr(Generator, "generate", copies)
    report = recipe.main([
        "--checkpoint", str(checkpoint), "--reference-shards", str(tmp_path / "shards" / "toy-000000.tar"),
        "--encoder", encoder.name, "--modes", "image", "-n", "2", "--duration", "1.0", "--k", "1",
    ])
    labels = loaded["labels"]
    assert sorted(labels) == sorted(synthetic.INSTRUMENTS * 2) and report["queries"] == 8
    entry = report["modes"]["image"]
    assert entry["clips"] == 16 and entry["knn_accuracy"] == 1.0
    text = encoder.encode_text(labels).double()  # "a photo of {label}", the recipe's default template
    expected = (F.normalize(text, dim=-1) * F.normalize(loaded["clip"].double(), dim=-1)).sum(-1).mean()
    assert abs(entry["relevance"] - expected.item()) < 1e-6
    # 0 up to the square roots of the near-zero eigenvalues of a rank-deficient covariance
    # (32 windows of 128 values): about 1e-4, against above 1 for a wrong answer below.
    assert abs(entry["fad"]) < 1e-3

    # A wrong answer is seen: clips of the next instrument score 0 accuracy and a lower relevance.
    def next_instrument(self, embeddings, num_samples=1, **settings):
        rows = (F.normalize(embeddings, dim=-1) @ loaded["clip"].T).argmax(1)
        names = [synthetic.INSTRUMENTS[(synthetic.INSTRUMENTS.index(labels[r]) + 1) % 8] for r in rows.tolist()]
        other = torch.tensor([labels.index(name) for name in names])
        return Generation(loaded["audio"][other][:, None].expand(-1, num_samples, -1), None, embeddings, 16000)

    monkeypatch.setattr(Generator, "generate", next_instrument)
    wrong = recipe.main([
        "--checkpoint", str(checkpoint), "--reference-shards", str(tmp_path / "shards" / "toy-000000.tar"),
        "--encoder", encoder.name, "--modes", "image", "-n", "2", "--duration", "1.0", "--k", "1",
    ])["modes"]["image"]
    assert wrong["knn_accuracy"] == 0.0 and wrong["fad"] > 1.0

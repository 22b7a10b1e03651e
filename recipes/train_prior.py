"""Train the diffusion prior (CLIP text embedding -> CLIP image embedding) with LightningCLI.

    python recipes/train_prior.py fit --config recipes/configs/prior/toy.yaml
    python recipes/train_prior.py fit --config recipes/configs/prior/vggsound.yaml \\
        --data.shards 'shards/vggsound/train-{000000..000999}.tar' --trainer.devices 8
    python recipes/train_prior.py fit --config recipes/configs/prior/vggsound.yaml \\
        --data.shards null --data.pairs '[pairs/vggsound.npz]'

Pairs are read precomputed (``--data.pairs``: ``.npz`` files with ``text`` and ``image``
arrays) or computed once with the query encoder from a webdataset of images and captions
(``--data.shards``, ``--data.encoder``; ``--data.cache`` keeps them for the next run, with a
record of the shard files and encoder they came from: a cache from other shards or another
encoder, or from these changed since, is refused, not trained on). The resolved
configuration is saved as ``config.yaml`` in the run's log folder, the seed comes from the
configuration, and after ``fit`` the prior is exported to ``--export`` (default
``<log_dir>/prior``) with the git commit and the resolved configuration as provenance; load
it with ``clipcore.prior.DiffusionPrior.load``.
"""

from __future__ import annotations

from clipcore.prior_system import PriorDataModule, PriorSystem
from clipcore.training import TrainingCLI, run_recipe


def main(args: list[str] | None = None) -> TrainingCLI:
    return TrainingCLI(PriorSystem, PriorDataModule, export_folder="prior", seed_everything_default=0, args=args)


if __name__ == "__main__":
    run_recipe(main, "train_prior")

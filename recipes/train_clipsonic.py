"""Train CLIPSonic (LightningCLI).

    python recipes/train_clipsonic.py fit --config recipes/configs/clipsonic/toy.yaml
    python recipes/train_clipsonic.py fit --config recipes/configs/clipsonic/vggsound.yaml \\
        --data.train_shards 'shards/vggsound/train-{000000..000999}.tar' --trainer.devices 8

The resolved configuration is saved as ``config.yaml`` in the run's log folder, the seed
comes from the configuration (``seed_everything``), and after ``fit`` the averaged (EMA)
model is exported for ``clipsonic generate`` to ``--export`` (default
``<log_dir>/model``) with the git commit and the resolved configuration as provenance.
"""

from __future__ import annotations

from clipcore.datamodule import ShardDataModule
from clipcore.training import TrainingCLI, run_recipe
from clipsonic.system import CLIPSonicSystem


def main(args: list[str] | None = None) -> TrainingCLI:
    return TrainingCLI(CLIPSonicSystem, ShardDataModule, export_folder="model", seed_everything_default=0, args=args)


if __name__ == "__main__":
    run_recipe(main, "train_clipsonic")

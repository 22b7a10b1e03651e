"""Train CLIPSep / CLIPSep-NIT (LightningCLI: fit, validate, test).

    python recipes/train_clipsep.py fit --config recipes/configs/clipsep/toy.yaml
    python recipes/train_clipsep.py fit --config recipes/configs/clipsep/vggsound.yaml \\
        --data.train_shards 'shards/vggsound/train-{000000..000999}.tar' --trainer.devices 8
    python recipes/train_clipsep.py validate --config runs/x/config.yaml --ckpt_path runs/x/checkpoints/last.ckpt

The resolved configuration is saved as ``config.yaml`` in the run's log folder and the
seed comes from it (``seed_everything``). After every validation the model is exported
(``save_pretrained``) to ``<log_dir>/pretrained/last`` and, at the highest validation SDR
improvement (``val/sdri``), ``<log_dir>/pretrained/best``, with the git commit and the resolved configuration as
provenance; ``clipsep separate --checkpoint <log_dir>/pretrained/best`` uses it directly.
"""

from __future__ import annotations

from clipcore.datamodule import ShardDataModule
from clipcore.training import TrainingCLI, run_recipe
from clipsep.system import CLIPSepSystem


def main(args: list[str] | None = None) -> TrainingCLI:
    return TrainingCLI(CLIPSepSystem, ShardDataModule, seed_everything_default=1234, args=args)


if __name__ == "__main__":
    run_recipe(main, "train_clipsep")

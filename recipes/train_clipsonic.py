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
from clipcore.training import TrainingCLI, run_recipe, log_dir
from clipsonic.system import CLIPSonicSystem


class CLIPSonicCLI(TrainingCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--export", type=str | None, default=None,
                            help="Folder for the exported model (default: <log_dir>/model).")

    def after_fit(self) -> None:
        export = self._config().get("export")
        if not self.trainer.is_global_zero or (export is None and self.trainer.fast_dev_run):
            return  # a dev run has no log folder to export to unless --export names one
        directory = export or log_dir(self.trainer) / "model"
        run_config = self.parser.dump(self.config)
        self.model.export(directory, provenance={"run_config": run_config})
        print(f"exported the averaged model to {directory}")

    def _config(self):
        return self.config[self.subcommand] if self.subcommand else self.config


def main(args: list[str] | None = None) -> CLIPSonicCLI:
    return CLIPSonicCLI(
        CLIPSonicSystem,
        ShardDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":
    run_recipe(main, "train_clipsonic")

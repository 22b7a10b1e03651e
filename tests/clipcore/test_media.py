"""The training logger's media: RGB figures reach TensorBoard-style writers as HWC images
and CSV-style loggers as PNG files."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from clipcore.media import log_media

FIGURE = np.random.default_rng(0).integers(0, 256, (390, 1200, 3), dtype=np.uint8)


class _SummaryWriterCalls:
    """Records calls with the signature of ``torch.utils.tensorboard.SummaryWriter``
    (not installed here)."""

    def __init__(self):
        self.images, self.audio = [], []

    def add_image(self, tag, img_tensor, global_step=None, walltime=None, dataformats="CHW"):
        self.images.append((tag, img_tensor, global_step, dataformats))

    def add_audio(self, tag, snd_tensor, global_step=None, sample_rate=44100, walltime=None):
        self.audio.append((tag, snd_tensor.shape, sample_rate))


def test_tensorboard_writers_get_the_rgb_figure_as_hwc():
    writer = _SummaryWriterCalls()
    trainer = SimpleNamespace(loggers=[SimpleNamespace(experiment=writer)])
    log_media(trainer, "val/example0", 7, {"spectrograms": FIGURE}, {"estimate": torch.zeros(800)}, 16000)
    ((tag, image, step, dataformats),) = writer.images
    assert (tag, step, dataformats) == ("val/example0/spectrograms", 7, "HWC")
    assert image.shape == (390, 1200, 3) and image.dtype == np.uint8
    assert writer.audio == [("val/example0/estimate", (1, 800), 16000)]


def test_file_loggers_get_the_figure_as_a_png(tmp_path):
    logger = CSVLogger(tmp_path)
    trainer = SimpleNamespace(loggers=[logger], default_root_dir=tmp_path)
    log_media(trainer, "val/example0", 7, {"spectrograms": FIGURE}, {}, 16000, caption="violin")
    (png,) = (tmp_path / "lightning_logs" / "version_0" / "media").glob("*.png")
    assert png.name == "val-example0-step0000007-violin-spectrograms.png"
    assert np.array_equal(np.asarray(Image.open(png)), FIGURE)
    assert not list(png.parent.glob(".*.part"))

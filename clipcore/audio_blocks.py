"""Block-wise audio file I/O: files of any length read and written in bounded memory.

::

    with AudioReader("film-mix.wav") as reader:          # checks the file, reads nothing yet
        spool = StemSpool(Path("out/violin.wav"), reader.sample_rate, reader.channels)
        try:
            for block in reader.blocks(480000):          # [C, n] float32, n <= 480000
                spool.write(block)
            spool.commit()                                # out/violin.wav appears, complete
        finally:
            spool.discard()                               # no-op after commit

A :class:`StemSpool` writes its blocks to a hidden 32-bit float file beside the target
(``.violin.wav.<random>.part``), keeping the peak and energy as it goes; :meth:`commit`
converts the spool to the target's format and bit depth (with the gain that
``clip="rescale"`` needs, known only once the peak is) in another hidden file, which is
then renamed over the target, so the target appears complete or not at all. The two
steps are also apart (:meth:`StemSpool.stage`, the conversion; :meth:`StemSpool.place`,
the rename), for several stems to be converted first and then put in place together.
The same errors as :func:`clipcore.audio.load_audio` and
:func:`clipcore.audio.save_audio`, each one sentence naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch

from clipcore.audio import (
    BIT_DEPTHS,
    FORMATS,
    AudioError,
    _reason,
    check_finite,
    open_audio,
    output_format,
    output_gain,
    scale_for_output,
    unwritable,
)
from clipcore.files import check_output_file, hidden_temporary, interrupts_held, put_in_place

__all__ = ["AudioReader", "StemSpool", "SPOOL_SUFFIX"]

SPOOL_SUFFIX = ".part"
"""Suffix of the temporary files beside an output (hidden: their names start with a dot)."""


class AudioReader:
    """An audio file opened for block-wise reading (a context manager).

    Attributes:
        path: the file.
        sample_rate: its rate.
        channels: its channel count (at most :data:`clipcore.audio.MAX_CHANNELS`).
        frames: its length in samples per channel.

    Raises:
        AudioError: on opening, as :func:`clipcore.audio.open_audio`; while reading,
            non-finite samples or a read failure (naming the file).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._handle = open_audio(self.path)
        self.sample_rate, self.channels, self.frames = self._handle.samplerate, self._handle.channels, self._handle.frames

    def blocks(self, frames: int, mono: bool = False) -> Iterator[torch.Tensor]:
        """The file from its start in blocks of ``frames`` samples (the last may be shorter).

        Yields:
            float32 ``[C, n]`` (``C = 1`` with ``mono``: the channel average).
        """
        self._handle.seek(0)
        while True:
            try:
                data = self._handle.read(frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError, OSError) as error:
                raise AudioError(f"{self.path}: cannot be read as audio ({_reason(error)}).") from None
            if not len(data):
                return
            block = torch.from_numpy(np.ascontiguousarray(data.T))
            if not torch.isfinite(block).all():
                raise AudioError(f"{self.path}: contains non-finite samples (NaN or infinity).")
            yield block.mean(0, keepdim=True) if mono else block

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StemSpool:
    """One output file written block by block (see the module notes).

    Args:
        path: the target file; its folder is created.
        sample_rate: samples per second.
        channels: channel count of every block.
        format: ``"wav"`` or ``"flac"`` (default: the target's extension).
        bit_depth: ``"16"``, ``"24"`` or ``"32f"``.
        clip: a mode of :data:`clipcore.audio.CLIP_MODES`.

    Attributes:
        committed: whether the target has been written.
        peak: largest absolute sample written so far.
        energy: sum of squared samples so far (float64, all channels).
        frames: samples per channel so far.
    """

    def __init__(self, path: Path, sample_rate: int, channels: int, format: str | None = None,
                 bit_depth: str = "16", clip: str = "none"):
        self.path = Path(path)
        self.format = output_format(self.path, format, bit_depth, clip)
        self.bit_depth, self.clip, self.sample_rate = bit_depth, clip, int(sample_rate)
        self.peak, self.energy, self.frames, self.committed = 0.0, 0.0, 0, False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._spool: Path | None = None
        self._staged: Path | None = None
        try:
            with interrupts_held():
                self._spool = hidden_temporary(self.path, SPOOL_SUFFIX)
            # RF64: a float spool of a long stereo film mix passes the 4 GB limit of WAV.
            try:
                self._file = sf.SoundFile(str(self._spool), "w", self.sample_rate, channels, subtype="FLOAT",
                                          format="RF64")
            except (sf.LibsndfileError, RuntimeError) as error:
                raise unwritable(self.path, error) from None
        except BaseException:
            if self._spool is not None:
                self._spool.unlink(missing_ok=True)
            raise

    def write(self, block: torch.Tensor) -> None:
        """Append ``[C, n]`` samples.

        Raises:
            AudioError: non-finite samples (nothing is then committed), or a failed write
                (a full disk).
        """
        block = block.detach().to("cpu", torch.float32)
        check_finite(block, str(self.path))
        if block.shape[-1]:
            self.peak = max(self.peak, block.abs().max().item())
            self.energy += block.double().pow(2).sum().item()
            self.frames += block.shape[-1]
            try:
                self._file.write(np.ascontiguousarray(block.numpy().T))
            except (sf.LibsndfileError, RuntimeError) as error:
                raise unwritable(self.path, error) from None

    def stage(self, block_frames: int = 1 << 18) -> None:
        """Convert the spool into a hidden file beside the target, for :meth:`place`, and
        remove the spool.

        Raises:
            AudioError: nothing was written, or the conversion failed (a full disk).
                UsageError: the target is a folder, or its folder cannot be written.
        """
        self._file.close()
        if self.frames == 0:
            raise AudioError(f"{self.path}: refusing to write zero samples.")
        check_output_file(self.path, option=None)
        gain = output_gain(self.peak, self.clip)
        with interrupts_held():
            self._staged = hidden_temporary(self.path)
        try:
            with sf.SoundFile(str(self._spool)) as spool, sf.SoundFile(
                str(self._staged), "w", self.sample_rate, spool.channels, subtype=BIT_DEPTHS[self.bit_depth],
                format=FORMATS[self.format],
            ) as out:
                for data in spool.blocks(block_frames, dtype="float32", always_2d=True):
                    out.write(scale_for_output(torch.from_numpy(data.T), gain, self.clip, self.bit_depth))
        except (sf.LibsndfileError, RuntimeError) as error:
            raise unwritable(self.path, error) from None
        self._remove_spool()

    def place(self) -> Path:
        """Rename the staged file over the target; call it with interrupts held
        (:func:`clipcore.files.interrupts_held`), together with whatever records it."""
        put_in_place(self._staged, self.path)
        self._staged, self.committed = None, True
        return self.path

    def commit(self, block_frames: int = 1 << 18) -> Path:
        """Convert the spool into the target (atomically) and remove it.

        Raises:
            AudioError: nothing was written.
        """
        self.stage(block_frames)
        with interrupts_held():
            return self.place()

    def discard(self) -> None:
        """Close and remove the spool and any staged file (the target, if committed, stays)."""
        self._remove_spool()
        if self._staged is not None:
            self._staged.unlink(missing_ok=True)
            self._staged = None

    def _remove_spool(self) -> None:
        if self._spool is not None:
            self._file.close()
            self._spool.unlink(missing_ok=True)
            self._spool = None

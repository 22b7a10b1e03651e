"""Streaming separation: overlap-add over segments of a signal that arrives in blocks.

:class:`OverlapAdd` cuts a model-rate signal into segments of ``segment`` samples that
overlap by ``overlap`` (:func:`segment_starts`), separates them ``batch_size`` at a
time, and crossfades them (:func:`crossfade_window`) into output that it hands back as
soon as no later segment can change it. The segments, their batches and their windows
are the same however the input is cut into blocks, so streamed output equals the
whole-signal output (:meth:`clipsep.separate.Separator.separate` runs the same code on
one block).

:func:`stream_separation` adds the input's rate: a stateful resampler (``soxr``) on the
way in and one on the way out, and returns output blocks aligned with the input blocks'
samples. Memory holds a few segments, never the whole signal.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from typing import Callable, Iterable, Iterator

import numpy as np
import soxr
import torch

__all__ = ["MAX_SEGMENT_SECONDS", "segment_starts", "crossfade_window", "OverlapAdd", "Resampler", "stream_separation"]

MAX_SEGMENT_SECONDS = 600.0
"""Longest segment (seconds) one pass of the network may take."""

SegmentFn = Callable[[torch.Tensor], torch.Tensor]
"""``[B, C, L]`` mixture segments -> ``[B, N, C, L]`` separated segments (N outputs)."""


def segment_starts(length: int, segment: int, overlap: int) -> list[int]:
    """Start samples of the segments covering ``length`` samples.

    Consecutive segments start ``segment - overlap`` apart; the last one may reach past
    the end (it is zero-padded). A signal no longer than one segment gets one segment.
    """
    if length <= segment:
        return [0]
    hop = segment - overlap
    return [i * hop for i in range(math.ceil((length - segment) / hop) + 1)]


def crossfade_window(segment: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    """Weights ``[segment]`` of one segment in the overlap-add.

    The first ``overlap`` samples rise as ``sin^2`` (if ``fade_in``), the last ``overlap``
    fall as ``cos^2`` (if ``fade_out``), the rest is one; where a falling edge meets the
    next segment's rising edge the two sum to one.
    """
    window = torch.ones(segment)
    if overlap > 0:
        rise = torch.sin(0.5 * math.pi * (torch.arange(overlap) + 0.5) / overlap) ** 2
        if fade_in:
            window[:overlap] = rise
        if fade_out:
            window[segment - overlap:] = 1.0 - rise
    return window


class OverlapAdd:
    """Segment, separate in batches and crossfade a signal given block by block.

    The segment starting at ``s`` is the last one once the signal ends at or before
    ``s + segment`` (as in :func:`segment_starts`), so a segment is separated when one
    sample beyond it has arrived, or at :meth:`finish`.

    Args:
        separate_segments: the network part (see :data:`SegmentFn`).
        outputs: N, the outputs per segment.
        channels: C of every block.
        segment: segment length in samples.
        overlap: samples shared by consecutive segments (at most half a segment).
        batch_size: segments per call of ``separate_segments``.
    """

    def __init__(self, separate_segments: SegmentFn, outputs: int, channels: int, segment: int, overlap: int,
                 batch_size: int):
        self.separate_segments = separate_segments
        self.segment, self.overlap, self.hop, self.batch_size = segment, overlap, segment - overlap, batch_size
        self.windows = {(i, o): crossfade_window(segment, overlap, i, o) for i in (False, True) for o in (False, True)}
        self.pending = torch.zeros(channels, 0)  # input from sample self.offset on
        self.offset = 0
        self.length = 0  # samples received
        self.out = torch.zeros(outputs, channels, 0)  # output being summed, from sample self.emitted on
        self.emitted = 0
        self.ready: list[tuple[int, bool]] = []  # (start, last) of segments waiting for a batch
        self.next_start, self.count = 0, 0  # next segment to plan; segments planned so far

    def push(self, block: torch.Tensor) -> Iterator[torch.Tensor]:
        """Take ``[C, n]`` input; yield ``[N, C, m]`` finished output after each batch."""
        self.pending = torch.cat([self.pending, block.to(torch.float32)], dim=-1)
        self.length += block.shape[-1]
        while self.next_start + self.segment < self.length:  # a sample beyond: not the last segment
            self._plan(last=False)
            if len(self.ready) == self.batch_size:
                yield self._run()

    def finish(self) -> Iterator[torch.Tensor]:
        """The input has ended: separate what is left; yield the rest of the output."""
        if self.length == 0:
            return
        self._plan(last=True)
        while self.ready:
            yield self._run()

    def _plan(self, last: bool) -> None:
        self.ready.append((self.next_start, last))
        self.next_start += self.hop
        self.count += 1

    def _run(self) -> torch.Tensor:
        batch, self.ready = self.ready[: self.batch_size], self.ready[self.batch_size:]
        segments = []
        for start, _ in batch:
            piece = self.pending[:, start - self.offset:start - self.offset + self.segment]
            segments.append(torch.nn.functional.pad(piece, (0, self.segment - piece.shape[-1])))
        separated = self.separate_segments(torch.stack(segments)).cpu()  # [B, N, C, segment]
        end = min(batch[-1][0] + self.segment, self.length)
        if end - self.emitted > self.out.shape[-1]:
            grow = end - self.emitted - self.out.shape[-1]
            self.out = torch.cat([self.out, self.out.new_zeros(*self.out.shape[:2], grow)], dim=-1)
        first = self.count - len(self.ready) - len(batch)  # index of the batch's first segment
        for index, ((start, last), piece) in enumerate(zip(batch, separated), start=first):
            valid = min(self.segment, self.length - start)
            at = start - self.emitted
            self.out[..., at:at + valid] += piece[..., :valid] * self.windows[index > 0, not last][:valid]
        done = self.length if batch[-1][1] else (self.ready[0][0] if self.ready else self.next_start)
        finished, self.out = self.out[..., :done - self.emitted], self.out[..., done - self.emitted:]
        self.emitted = done
        keep = (self.ready[0][0] if self.ready else self.next_start) - self.offset
        if keep > 0:
            self.pending, self.offset = self.pending[:, keep:], self.offset + keep
        return finished


class Resampler:
    """A stateful resampler of ``[C, n]`` blocks (soxr, high quality); the identity when
    the rates are equal."""

    def __init__(self, in_rate: int, out_rate: int, channels: int):
        self.stream = soxr.ResampleStream(in_rate, out_rate, channels, dtype="float32") if in_rate != out_rate else None

    def __call__(self, block: torch.Tensor, last: bool = False) -> torch.Tensor:
        if self.stream is None:
            return block
        data = self.stream.resample_chunk(np.ascontiguousarray(block.numpy().T), last=last)
        return torch.from_numpy(np.ascontiguousarray(data.T))


def stream_separation(
    blocks: Iterable[torch.Tensor], sample_rate: int, model_rate: int, outputs: int, overlap_add: Callable[[int], OverlapAdd],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Separate a signal given in blocks at ``sample_rate``, through a model at ``model_rate``.

    Args:
        blocks: ``[C, n]`` float32 blocks (C the same in all, at least one sample in all).
        sample_rate: their rate.
        model_rate: the rate of the network.
        outputs: N, the outputs per segment.
        overlap_add: makes the :class:`OverlapAdd` for C channels.

    Yields:
        ``(mixture, separated)``: ``[C, m]`` input samples and ``[N, C, m]`` their
        separated outputs, in order; together exactly the input's samples.
    """
    blocks = iter(blocks)
    first = next(blocks, None)
    if first is None:
        return
    channels = first.shape[0]
    engine = overlap_add(channels)
    down = Resampler(sample_rate, model_rate, channels)
    up = Resampler(model_rate, sample_rate, channels * outputs)  # all outputs' channels in one stream
    inputs: deque[torch.Tensor] = deque()  # input samples whose output has not come yet

    def aligned(flat: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Pair ``[N * C, m]`` output with the input samples it belongs to (any output past
        the input's end, from the resamplers' rounding, is dropped)."""
        out = flat.reshape(outputs, channels, flat.shape[-1])
        while out.shape[-1] and inputs:
            mix = inputs.popleft()
            if mix.shape[-1] > out.shape[-1]:
                mix, rest = mix[:, : out.shape[-1]], mix[:, out.shape[-1]:]
                inputs.appendleft(rest)
            yield mix, out[..., : mix.shape[-1]]
            out = out[..., mix.shape[-1]:]

    def back(pieces: Iterable[torch.Tensor], last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for piece in pieces:  # [N, C, m] at the model's rate
            yield from aligned(up(piece.reshape(-1, piece.shape[-1])))
        if last:
            yield from aligned(up(torch.zeros(channels * outputs, 0), last=True))

    for block in itertools.chain([first], blocks):
        inputs.append(block)
        yield from back(engine.push(down(block)))
    tail = down(torch.zeros(channels, 0), last=True)
    yield from back(itertools.chain(engine.push(tail), engine.finish()), last=True)
    for mix in inputs:  # the resamplers' rounding left the end short: zeros
        yield mix, torch.zeros(outputs, *mix.shape)

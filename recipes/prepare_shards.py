"""Cut video files (or labelled audio files) into clips and write them as webdataset
shards for training.

    python recipes/prepare_shards.py VIDEOS_OR_CSV OUT_DIR [options]
    python recipes/prepare_shards.py SOUNDS_OR_CSV OUT_DIR --audio --clip-model SPEC [options]

Run with ``--help`` for the input layouts and how CSV rows map to file names.

Every worker process imports this file, so the shard format (torch, Lightning) is
imported inside the functions that need it, and a worker that only decodes starts fast.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import signal
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from clipcore.audio import MIN_SAMPLE_RATE
from clipcore.cli import stop_on_sigterm
from clipcore.errors import UsageError, report_errors
from clipcore.files import ListedFile, atomic_write, check_output_folder
from clipcore.supervised import SupervisedPool
from clipcore.video import Clip, VideoError, read_clip
from clipcore.video_library import LAYOUTS, clip_spans, read_video_list

EPILOG = """\
inputs:
  a folder      every video file below it (recursively: .mp4 .mkv .webm .avi .mov);
                video id = the path below the folder without extension; label = the
                name of the file's folder when it is not the top folder.
  a CSV file    one of these layouts (--layout, detected when 'auto'); file names are
                looked up below --video-root (default: the CSV's folder), recursively:
    generic     a header row with a column 'path' (or 'file', 'filename', 'video'),
                optional 'label', 'start' and 'end' (seconds); paths are relative to
                --video-root.
    vggsound    rows 'youtube_id,start_seconds,label,split' (vggsound.csv, no header).
                A row maps to the file <youtube_id>_<start:06d>.<ext> (the usual
                10-second download, read whole) or else to <youtube_id>.<ext> (the full
                video, read from start_seconds for 10 s). --split keeps one split.
    music       rows 'audio path,frames folder,frame count,label' (the CLIPSep lists);
                the video id is the audio file's stem, and it maps to <video_id>.<ext>.

labelled audio (--audio, with --clip-model): a folder of audio files (.wav .flac .ogg
.mp3 .aiff; label = the file's folder name) or a CSV with a header row, a 'path' column
and a --label-column; --label-pattern takes labels from file names instead (its group
'label', else its first group: '^(.+?)_[0-9]+$' labels dog_bark_03.wav "dog bark";
underscores read as spaces). Each clip stores its label's CLIP text embedding, averaged
over the CLIPSep evaluation's prompt templates, in place of frames: audio shards, for
CLIPSep training with text queries (see clipcore.shards).

Each file gives clips of --clip-seconds (back to back, from its start or the row's
start), within the time both tracks cover; a file shorter than one clip gives one clip of
its length if that is at least --min-seconds. A clip that takes longer than
--clip-timeout to decode is abandoned and the run goes on. Shards are written under a temporary name and renamed when complete; a
rerun with the same inputs and settings skips complete shards (OUT_DIR/plan.json
records them). Files and clips that cannot be used are listed with a reason in the
summary and in OUT_DIR/skipped.tsv (tracebacks of unforeseen failures in errors.log).
A clip's sample key is <dataset>/<video id>/<start ms>, dots and slashes in the id made
underscores; videos whose ids would give one key (x/good and x_good) each get a short
hash in theirs (plan.json lists them), and every clip's json holds its video id as it is.
"""


@dataclass(frozen=True)
class ClipJob:
    """One clip to cut."""

    path: str
    video_id: str
    label: str | None
    start: float
    end: float


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_shards",
        description="Cut video files into clips and write webdataset shards (FLAC audio, JPEG frames, metadata, "
        "optional CLIP embeddings) for ShardDataModule.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", type=Path, help="a folder of videos or a CSV file listing them")
    parser.add_argument("out_dir", type=Path, help="folder for the shards")
    parser.add_argument("--layout", choices=["auto", *LAYOUTS], default="auto",
                        help="CSV layout (default: auto)")
    parser.add_argument("--video-root", type=Path, help="where CSV rows' files are (default: the CSV's folder)")
    parser.add_argument("--split", help="vggsound layout: keep rows of this split only (train or test)")
    parser.add_argument("--dataset", help="dataset name in sample keys (default: the input's name)")
    parser.add_argument("--prefix", default="shard", help="shard file prefix (default: shard)")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="clip length (default: 10)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="shortest clip kept (default: 1)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio rate (default: 16000)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second (default: 1)")
    parser.add_argument("--short-side", type=int, default=224, help="frame short side in pixels (default: 224)")
    parser.add_argument("--shard-size", type=int, default=256, help="clips per shard (default: 256)")
    parser.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    parser.add_argument("--clip-timeout", type=float, default=60.0,
                        help="seconds one clip (or one file's header) may take before it is abandoned and listed "
                        "in skipped.tsv (default: 60)")
    parser.add_argument("--clip-model", help="also store CLIP image embeddings per frame: a QueryEncoder "
                        "checkpoint folder, an open_clip name like ViT-B-32/openai, or ARCH=weights-file")
    parser.add_argument("--audio", action="store_true",
                        help="the input is labelled audio, not video (see 'labelled audio' below; needs --clip-model)")
    parser.add_argument("--label-column", default="label", help="--audio with a CSV: the label column (default: label)")
    parser.add_argument("--label-pattern", help="--audio: a regular expression taking each label from the file name")
    return parser


# ----------------------------------------------------------------------------- inputs


def read_entries(args: argparse.Namespace) -> tuple[list[ListedFile], list[tuple[str, str]]]:
    """The input videos (:func:`clipcore.video_library.read_video_list`), and rows that name
    no existing file (with a reason)."""
    return read_video_list(args.input, args.video_root, args.layout, args.split)


def plan_clips(entry: ListedFile, clip_seconds: float, min_seconds: float) -> tuple[str, list[ClipJob], str | None]:
    """The clips of one input: ``(path, clips, None)`` or ``(path, [], reason)``.
    Reads only the file's header."""
    spans, reason = clip_spans(entry.path, clip_seconds, min_seconds, entry.start, entry.end)
    return entry.path, [ClipJob(entry.path, entry.file_id, entry.label, a, b) for a, b in spans], reason


# ----------------------------------------------------------------------------- writing

_ENCODER = None  # a worker's QueryEncoder, loaded once by _init_worker


@dataclass(frozen=True)
class EncodedSample:
    """A clip ready for its shard: a :class:`~clipcore.shards.ShardSample`'s tar members."""

    key: str
    encoded: dict[str, bytes]

    def members(self) -> dict[str, bytes]:
        """Tar members: ``{suffix: bytes}``."""
        return self.encoded


def _init_worker(threads: int, clip_model: str | None) -> None:
    global _ENCODER
    if clip_model:
        import torch

        from clipcore.query import QueryEncoder
        from clipcore.shards import frame_embeddings  # noqa: F401  (imported before the clock runs)

        torch.set_num_threads(threads)
        _ENCODER = QueryEncoder.load(clip_model)


def cut_clip(job: ClipJob, settings: dict) -> tuple[Clip, dict[str, np.ndarray]] | str:
    """Decode one clip and embed its frames (in a worker): the clip and its embeddings, or
    why it cannot be used."""
    try:
        clip = read_clip(job.path, job.start, job.end, settings["sample_rate"], settings["fps"], settings["short_side"])
    except VideoError as error:
        return str(error)
    if _ENCODER is None:
        return clip, {}
    from clipcore.shards import frame_embeddings

    return clip, {_ENCODER.name: frame_embeddings(_ENCODER, clip.frames)}


def encode_sample(dataset: str, job: ClipJob, clip: Clip, embeddings: dict[str, np.ndarray], *,
                  key_id: str) -> EncodedSample:
    """The shard members of one decoded clip (FLAC, JPEG, JSON, embeddings), under the
    video part of the key ``key_id`` (see :func:`clipcore.shards.distinct_key_ids`)."""
    from clipcore.shards import ShardSample

    sample = ShardSample(dataset, job.video_id, job.start, clip.audio, clip.sample_rate, clip.frames, clip.fps,
                         job.label, embeddings, key_id=key_id)
    return EncodedSample(sample.key, sample.members())


class ShardSkips:
    """The clips of each written shard that were skipped, kept beside the shards in
    ``shard_skips.json`` (rewritten atomically as each shard is written), so that a resumed
    run lists the complete shards' skips with its own, even after an interruption."""

    def __init__(self, out: Path) -> None:
        self.path = out / "shard_skips.json"
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            record = {}
        self.by_shard: dict[str, list[tuple[str, str]]] = {}
        for name, lines in (record.items() if isinstance(record, dict) else ()):
            well_formed = isinstance(lines, list) and all(isinstance(x, list) and len(x) == 2 for x in lines)
            if well_formed and (out / name).is_file():  # a shard cut again is recorded again
                self.by_shard[name] = [(str(path), str(reason)) for path, reason in lines]

    def add(self, shard: str, lines: list[tuple[str, str]]) -> None:
        """Record the skips of ``shard`` (a path), just written."""
        self.by_shard[Path(shard).name] = sorted(set(lines))
        atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(self.by_shard, indent=1) + "\n"))

    def lines(self) -> list[tuple[str, str]]:
        """Every recorded skip, ``(file, reason)``."""
        return [line for lines in self.by_shard.values() for line in lines]


class ShardAssembler:
    """Collects clips as workers finish them, and writes each shard once all its clips are in.

    A shard holds its clips in planned order; one none of whose clips could be read is not
    written, so that a rerun tries it again.
    """

    def __init__(self, shards: list[tuple[str, list[ClipJob]]]) -> None:
        self.shards = shards
        self.slots: dict[int, list[EncodedSample | None]] = {n: [None] * len(jobs) for n, (_, jobs) in enumerate(shards)}
        self.remaining = {n: len(jobs) for n, (_, jobs) in enumerate(shards)}
        self.written = 0

    def add(self, shard: int, position: int, sample: EncodedSample | None) -> None:
        """Record one clip's result (None: skipped) and write the shard when it is complete."""
        self.slots[shard][position] = sample
        self.remaining[shard] -= 1
        if self.remaining[shard] == 0:
            from clipcore.shards import write_shard

            samples = [s for s in self.slots.pop(shard) if s is not None]
            if samples:
                write_shard(self.shards[shard][0], samples)
                self.written += len(samples)


def read_audio_entries(args: argparse.Namespace) -> list[ListedFile]:
    """The files of a labelled sound library (see :func:`clipcore.sound_library.read_library`)."""
    from clipcore.sound_library import read_library

    return read_library(args.input, args.label_column, args.label_pattern, args.video_root)


def plan_audio_clips(entry: ListedFile, clip_seconds: float, min_seconds: float) -> tuple[str, list[ClipJob], str | None]:
    """The clips of one audio file, like :func:`plan_clips`'s."""
    from clipcore.sound_library import clip_spans

    spans, reason = clip_spans(entry.path, clip_seconds, min_seconds)
    return entry.path, [ClipJob(entry.path, entry.file_id, entry.label, a, b) for a, b in spans], reason


def cut_audio_clip(job: ClipJob, settings: dict) -> tuple[np.ndarray, dict] | str:
    """Read one audio clip (in a worker): the audio, or why it cannot be used."""
    from clipcore.sound_library import read_span

    audio = read_span(job.path, job.start, job.end, settings["sample_rate"])
    return audio if isinstance(audio, str) else (audio, {})


def encode_audio_sample(dataset: str, sample_rate: int, texts: dict[str, np.ndarray], encoder_name: str,
                        templates: list[str], job: ClipJob, audio: np.ndarray, _: dict, *, key_id: str) -> EncodedSample:
    """The shard members of one labelled audio clip (FLAC, JSON, its label's text embedding),
    like :func:`encode_sample`'s."""
    from clipcore.shards import ShardSample

    sample = ShardSample(dataset, job.video_id, job.start, audio, sample_rate, np.zeros((0, 1, 1, 3), np.uint8), 0.0,
                         job.label, {encoder_name: texts[job.label]}, templates, key_id=key_id)
    return EncodedSample(sample.key, sample.members())


@dataclass(frozen=True)
class Steps:
    """What the recipe does with one kind of input: plan a file's clips, cut a clip (in a
    worker), encode it into shard members, and the settings that the plan record adds."""

    plan: Callable[[ListedFile], tuple[str, list[ClipJob], str | None]]
    cut: Callable[[ClipJob], tuple | str]
    encode: Callable[..., EncodedSample]
    record: dict
    order: Callable[[list[ClipJob]], list[ClipJob]] = list


def interleave_labels(jobs: list[ClipJob]) -> list[ClipJob]:
    """The clips taken in turn from each label (a library sorted by folder would otherwise
    fill each shard with one label, and training would mostly mix a sound with its own kind)."""
    groups: dict[str | None, list[ClipJob]] = {}
    for job in jobs:
        groups.setdefault(job.label, []).append(job)
    queues = list(groups.values())
    return [queue[k] for k in range(max(map(len, queues), default=0)) for queue in queues if k < len(queue)]


def _audio_steps(args: argparse.Namespace, encoder, entries: list[ListedFile], dataset: str) -> Steps:
    """The steps of a labelled sound library: each label's text embedding is computed here, once."""
    from clipcore.prompts import CLIPSEP_EVAL_TEMPLATES
    from clipcore.sound_library import label_embeddings

    templates = list(CLIPSEP_EVAL_TEMPLATES)
    texts = label_embeddings(encoder, [entry.label for entry in entries], templates)
    if len(texts) == 1:  # not an error: these shards may be trained on beside others
        print(f"prepare_shards: note: every file of {args.input} has the label {next(iter(texts))!r}; a mixture of "
              "these clips alone pairs a sound with its own kind, which teaches no separation: train on these shards "
              "together with shards of other sounds.", file=sys.stderr)
    return Steps(
        functools.partial(plan_audio_clips, clip_seconds=args.clip_seconds, min_seconds=args.min_seconds),
        functools.partial(cut_audio_clip, settings={"sample_rate": args.sample_rate}),
        functools.partial(encode_audio_sample, dataset, args.sample_rate, texts, encoder.name, templates),
        {"audio": True, "templates": templates},
        interleave_labels,
    )


def _describe(job: ClipJob, reason: str) -> str:
    return f"{job.path}: decoding the clip from {job.start:.1f} s {reason}; abandoned."


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, one option at a time, a value the recipe cannot use (NaN fails every test)."""
    checks = (
        ("--clip-seconds", args.clip_seconds, 0 < args.clip_seconds < math.inf, "a positive number of seconds"),
        ("--min-seconds", args.min_seconds, 0 < args.min_seconds < math.inf, "a positive number of seconds"),
        ("--clip-timeout", args.clip_timeout, args.clip_timeout > 0, "a positive number of seconds"),
        ("--fps", args.fps, 0 < args.fps <= 60, "above 0 and at most 60 frames per second"),
        ("--sample-rate", args.sample_rate, MIN_SAMPLE_RATE <= args.sample_rate <= 192000,
         f"between {MIN_SAMPLE_RATE} and 192000 Hz"),
        ("--short-side", args.short_side, 16 <= args.short_side <= 4096, "between 16 and 4096 pixels"),
        ("--shard-size", args.shard_size, args.shard_size >= 1, "at least 1"),
        ("--workers", args.workers, args.workers >= 1, "at least 1"),
    )
    for option, value, valid, expected in checks:
        if not valid:
            raise UsageError(f"{option} must be {expected}, got {value:g}.")
    check_output_folder(args.out_dir, "out_dir")


def prepare(args: argparse.Namespace) -> int:
    """Run the recipe; returns the exit status."""
    _check_options(args)
    if args.audio and not args.clip_model:
        raise UsageError("--audio needs --clip-model: each label's CLIP text embedding is the query of its clips.")
    entries, skipped = (read_audio_entries(args), []) if args.audio else read_entries(args)
    if not entries:
        raise UsageError(f"{args.input}: no usable {'audio' if args.audio else 'video'} files found.")
    encoder = None
    if args.clip_model:  # loaded here once to refuse a bad one before any work, then by each video worker
        from clipcore.query import QueryEncoder

        encoder = QueryEncoder.load(args.clip_model)
    dataset = args.dataset or args.input.stem
    settings = {"sample_rate": args.sample_rate, "fps": args.fps, "short_side": args.short_side}
    steps = _audio_steps(args, encoder, entries, dataset) if args.audio else Steps(
        functools.partial(plan_clips, clip_seconds=args.clip_seconds, min_seconds=args.min_seconds),
        functools.partial(cut_clip, settings=settings), functools.partial(encode_sample, dataset), {})
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    initializer = functools.partial(_init_worker, threads, None if args.audio else args.clip_model)
    with SupervisedPool(args.workers, args.clip_timeout, initializer) as pool:
        return _prepare(args, pool, steps, dataset, encoder.name if encoder else None, settings, skipped, entries)


def _prepare(args: argparse.Namespace, pool: SupervisedPool, steps: Steps, dataset: str, encoder_name: str | None,
             settings: dict, skipped: list[tuple[str, str]], entries: list[ListedFile]) -> int:
    """Probe the entries, plan the clips, then cut and write the shards not yet written."""
    from clipcore.shards import distinct_key_ids, key_part

    jobs: list[ClipJob] = []
    failures: list[str] = []
    for index, outcome in tqdm(pool.map(steps.plan, entries), total=len(entries), desc="probing", unit="file"):
        if not outcome.ok:
            skipped.append((entries[index].path, f"{entries[index].path}: reading its header {outcome.reason}."))
            failures.append(outcome.traceback)
            continue
        path, clips, reason = outcome.value
        jobs.extend(clips)
        if reason:
            skipped.append((path, reason))
    jobs = steps.order(sorted(_once_each(jobs, skipped), key=lambda job: (job.path, job.start)))
    key_ids = distinct_key_ids((job.video_id, job.path) for job in jobs)
    record = {
        "dataset": dataset,
        "settings": {**settings, "clip_seconds": args.clip_seconds, "min_seconds": args.min_seconds,
                     "shard_size": args.shard_size, "clip_model": encoder_name, **steps.record},
        "clips": len(jobs),
        "digest": hashlib.sha1(json.dumps([asdict(job) for job in jobs]).encode()).hexdigest(),
    }
    hashed = sorted(key for (video_id, _), key in key_ids.items() if key != key_part(video_id))
    if hashed:  # recorded only then: a folder of an earlier version, which gave such videos one key, is refused
        record["hashed_keys"] = hashed
    out: Path = args.out_dir
    _check_plan(out, record)
    for stale in out.glob(f".{args.prefix}-*.tar.*.part"):
        stale.unlink()
    shards = []
    for number, first in enumerate(range(0, len(jobs), args.shard_size)):
        shard = out / f"{args.prefix}-{number:06d}.tar"
        if not shard.exists():
            shards.append((str(shard), jobs[first : first + args.shard_size]))
    resumed = (len(jobs) + args.shard_size - 1) // args.shard_size - len(shards)
    places = [(n, k) for n, (_, shard_jobs) in enumerate(shards) for k in range(len(shard_jobs))]
    tasks = [shards[n][1][k] for n, k in places]
    assembler, shard_skips = ShardAssembler(shards), ShardSkips(out)
    kept = shard_skips.lines()  # of the complete shards kept (a shard cut again is recorded again)
    of_shard: dict[int, list[tuple[str, str]]] = {}
    for index, outcome in tqdm(pool.map(steps.cut, tasks), total=len(tasks), desc="writing", unit="clip"):
        (shard, position), job, sample = places[index], tasks[index], None
        if outcome.ok and isinstance(outcome.value, str):
            of_shard.setdefault(shard, []).append((job.path, outcome.value))
        elif not outcome.ok:
            of_shard.setdefault(shard, []).append((job.path, _describe(job, outcome.reason)))
            failures.append(outcome.traceback)
        else:
            sample = steps.encode(job, *outcome.value, key_id=key_ids[job.video_id, job.path])
        assembler.add(shard, position, sample)
        if assembler.remaining[shard] == 0:
            shard_skips.add(shards[shard][0], of_shard.get(shard, []))
    skipped += kept + [line for lines in of_shard.values() for line in lines]
    _summary(out, assembler.written, len(shards), resumed, skipped, [f for f in failures if f])
    if assembler.written == 0 and resumed == 0:
        print(f"prepare_shards: error: no clip of {args.input} could be written.", file=sys.stderr)
        return 1
    return 0


def _once_each(jobs: list[ClipJob], skipped: list[tuple[str, str]]) -> list[ClipJob]:
    """The clips with one of each key (a video's clip starting at one time), the first listed;
    the others (a CSV row given twice, or two rows whose spans share a clip) go to ``skipped``."""
    kept: dict[tuple, ClipJob] = {}
    for job in jobs:
        key = (job.video_id, job.path, round(job.start * 1000))
        if key in kept:
            skipped.append((job.path, f"{job.path}: the clip from {job.start:.1f} s is listed more than once; "
                                      f"written once (label {kept[key].label!r})."))
        else:
            kept[key] = job
    return list(kept.values())


def _check_plan(out: Path, record: dict) -> None:
    plan_file = out / "plan.json"
    if plan_file.exists():
        try:
            previous = json.loads(plan_file.read_text())
        except (OSError, ValueError):
            previous = None
        if previous != record:
            raise UsageError(
                f"{out}: holds shards prepared from other inputs or settings (see {plan_file}); "
                "use a new folder, or delete it to start over."
            )
        return
    atomic_write(plan_file, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def _summary(out: Path, written: int, shards: int, resumed: int, skipped: list[tuple[str, str]],
             tracebacks: list[str]) -> None:
    if tracebacks:
        atomic_write(out / "errors.log", lambda tmp: tmp.write_text("\n".join(tracebacks)))
        print(f"{len(tracebacks)} clips failed unexpectedly: tracebacks in {out / 'errors.log'}")
    lines = sorted(set(skipped))  # one per file, or per clip where clips of a file failed apart
    print(f"wrote {written} clips in {shards} shards to {out}" + (f" ({resumed} complete shards kept)" if resumed else ""))
    if lines:
        atomic_write(out / "skipped.tsv", lambda tmp: tmp.write_text("".join(f"{p}\t{r}\n" for p, r in lines)))
        print(f"skipped {len({p for p, _ in lines})} files or clips of them (all listed in {out / 'skipped.tsv'}):")
        for _, reason in lines[:10]:
            print(f"  {reason}")


def main(argv: list[str] | None = None) -> int:
    import av.logging

    parser = build_parser()
    args = parser.parse_args(argv)
    # FFmpeg's own messages stay quiet (the summary gives reasons). Not av.logging.set_level:
    # its Python callback deadlocks FFmpeg's decoding threads (see clipcore.video).
    av.logging.set_libav_level(av.logging.PANIC)
    previous = stop_on_sigterm()  # a Slurm time limit or scancel: as Ctrl-C, resumable
    try:
        return report_errors("prepare_shards", lambda: prepare(args),
                             interrupted="interrupted; rerun the same command to resume.")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

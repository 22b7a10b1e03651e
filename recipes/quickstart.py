"""The quick start: both systems learned from videos of the miniature MUSIC world, then asked with text.

    make demo                                   # installs once, then runs this
    python recipes/quickstart.py                # the same, in a ready environment
    python recipes/quickstart.py --profile ci --out /tmp/quickstart   # the CI-sized run

The world (``clipcore.miniature``): eleven of MUSIC's instruments, sampled General MIDI
sounds playing melodies in their real, overlapping registers, each pictured by a drawing
varied in pose, colour and background. Three splits, each its own seed: ``train`` (with
off-screen sound the picture does not show), ``validation`` (every choice below is made
here) and ``test`` (reported only).

Every step runs the recipe or command a user would type (printed as ``$ ...``, its output
in ``OUT/logs/``); two independent commands share the two cores where they can:

1. data: the three splits as video files (CLIPSep's further training clips beside them,
   ``Profile.clipsep_train_clips``), cut into shards by
   ``recipes/prepare_shards.py --clip-model`` with the CLIP of step 2;
2. ``recipes/align_toy_clip.py``: a tiny CLIP aligned on (caption, picture) pairs drawn
   afresh, with a modality gap like real CLIP's -> ``OUT/query_encoder``;
3. ``recipes/train_clipsep.py`` (CLIPSep-NIT, image queries only; the checkpoint with the
   highest validation SDR improvement is kept), ``recipes/train_prior.py`` and
   ``recipes/train_clipsonic.py`` -> ``OUT/clipsep``, ``OUT/prior``, ``OUT/clipsonic``;
4. validation: CLIPSonic's guidance scale, per query mode, is chosen from
   ``Profile.guidance_choices`` by how often the timbre judge (``recipes/toy_judges.py``,
   trained on training renders only) recognises the queried instrument;
5. test: ``clipsep separate`` (soft masks to a power chosen on validation) on
   two-instrument mixtures with image queries (a frame of another clip), text queries
   (prompts never seen in alignment, e.g. "someone plays the cello"; zero-shot: CLIPSep
   never saw text) and the same text through the diffusion
   prior (``--prior``) or carried across CLIP's modality gap as measured on the prior's
   training pairs (``recipes/measure_gap.py``, ``--gap``: no training), run in step 3 once
   CLIPSep and the prior are trained, while CLIPSonic still trains; ``clipsonic generate``
   in image, zero-shot and prior modes;
6. the report (``OUT/report.json``; everything behind it in ``OUT/details.json``): SDR
   improvement per query kind and per instrument, recognition per mode, the CLIP's gap,
   each mean with its 95% interval (``recipes/quickstart_report.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing: clipcore & co.

import torch  # noqa: E402

from clipcore.errors import EXIT_PARTIAL, report_errors  # noqa: E402
from clipcore.miniature import world  # noqa: E402
from recipes.command_runner import Runner, StepFailed, fresh_run_folder, recipe, tool  # noqa: E402


@dataclass(frozen=True)
class Profile:
    """How big each step is (clips per split, optimizer steps, generated clips).

    ``clipsep_train_clips``: CLIPSep trains on the first this many clips of the training
    split (None: ``train_clips``); CLIPSonic, the prior and the gap on the first
    ``train_clips``. ``clipsep_distinct_queries``: CLIPSep's training mixes clips whose
    frames' embeddings have at most this cosine (``data.distinct_queries``; None: as they come).
    ``clipsep_width``: channels of CLIPSep's first U-Net level and of its masks (the tiny
    preset's 8, or more), trained in float32 for ``clipsep_steps``; ``clipsep_amx_width``
    and ``clipsep_amx_steps``: the width and steps instead where the CPU multiplies bf16
    matrices in hardware (AMX), trained in bf16 mixed precision (None: the same as elsewhere).
    ``mask_power``: ``clipsep separate --mask-power`` for queries where the training's image
    embeddings lie (image queries, text through the prior or across the gap), and
    ``mask_power_zero_shot`` for zero-shot text; both chosen on the validation split with
    three models (docs/quickstart_history.md). ``overlap``: ``clipsep separate --overlap``,
    segments sharing half their length (chosen on the validation split with three models:
    +0.23 to +0.39 dB with image queries and +0.25 to +0.38 dB through the prior against the
    command's default quarter). ``judge_ensemble``: timbre judges trained alike that vote
    (``recipes.toy_judges.judge_from_renders``; 1: one judge).
    """

    train_clips: int
    validation_clips: int
    test_clips: int
    align_steps: int
    align_images: int
    clipsep_steps: int
    prior_steps: int
    clipsonic_steps: int
    gen_samples: int
    gen_steps: int
    judge_clips: int
    clipsep_train_clips: int | None = None
    clipsep_distinct_queries: float | None = None
    clipsep_width: int = 8
    clipsep_amx_width: int | None = None
    clipsep_amx_steps: int | None = None
    judge_steps: int = 600
    judge_ensemble: int = 1
    guidance_choices: tuple[float, ...] = (2.0, 5.0)
    offscreen: float = 0.3
    clip_seconds: float = 5.0
    gen_seconds: float = 1.0
    mask_power: float = 1.5
    mask_power_zero_shot: float = 1.0
    overlap: float = 0.5


PROFILES = {
    # CLIPSonic's recognition on validation (image queries, guidance 10, 44 clips) rose from
    # 34% at 1000 steps to 64% at 2000; CLIPSep and then the prior train in the other lane,
    # as many steps as fit beside it. Where the CPU has AMX: width 16 in bf16 mixed precision,
    # 7200 steps (0.15 s a step; validation SDRi 5.24 to 5.87 dB). Without AMX, width 16 in
    # float32 takes twice width 8's step, so width 8 in float32, 8000 steps: on a 2-core AMD
    # EPYC (Zen 3) 974 s and the prior 28 s beside CLIPSonic's 1067 (validation SDRi 4.81 dB;
    # 7200 and 9600 steps ended at 5.06 and 5.49 and scored 5.22 and 5.17 dB on the test
    # split against 5.01: the schedules do not rank alike on the two splits).
    # CLIPSep on three times CLIPSonic's clips: on validation (whole clips, image queries,
    # mask power 1.5) 5.43 and 5.53 dB at seeds 1234 and 1 against 5.31 and 4.73; CLIPSonic
    # on them fell from 79% to 65% (image queries, 132 clips). CLIPSep's mixtures pair clips of
    # distinct queries (cosine at most 0.97: the toy CLIP's same-instrument frames lie above,
    # other instruments' below): on validation 5.63 / 5.96 / 6.52 dB at seeds 1234 / 1 / 2
    # against 5.68 / 5.47 / 5.08 (image queries, mask power 1.5); a fourth seed, measured
    # afterwards, lost (5.20 against 5.46).
    # docs/quickstart_history.md keeps the runs behind these settings.
    "demo": Profile(train_clips=330, clipsep_train_clips=990, clipsep_distinct_queries=0.97,
                    validation_clips=110, test_clips=220,
                    align_steps=500, align_images=300,
                    clipsep_steps=8000, prior_steps=600, clipsonic_steps=2000, gen_samples=4, gen_steps=15,
                    judge_clips=330, clipsep_amx_width=16, clipsep_amx_steps=7200, guidance_choices=(5.0, 10.0)),
    "ci": Profile(train_clips=55, clipsep_train_clips=77, clipsep_distinct_queries=0.97, validation_clips=22,
                  test_clips=44, align_steps=150,
                  align_images=100,
                  clipsep_steps=120, prior_steps=60, clipsonic_steps=40, gen_samples=1, gen_steps=10,
                  judge_clips=55, judge_steps=100, guidance_choices=(3.0,)),
}

ENCODER_NAME = "clip-toy"
SPLITS = ("train", "validation", "test")
MODES = ("image", "zs", "pd")


def _videos(folder: Path, split: str, clips: int, profile: Profile, start: int = 0) -> list[str]:
    offscreen = profile.offscreen if split == "train" else 0.0
    code = (f"from clipcore.miniature import world; world.write_videos({str(folder)!r}, {clips}, {split!r}, "
            f"start={start}, offscreen={offscreen}, duration={profile.clip_seconds}, frame_size=112)")
    return [sys.executable, "-c", code]


def _templates(templates: tuple[str, ...]) -> list[str]:
    return [a for t in templates for a in ("--template", t)]


def prepare(runner: Runner, out: Path, p: Profile) -> tuple[dict[str, str], Any]:
    """Steps 1 and 2 in one lane, and the timbre judge in the other (it needs nothing else,
    and takes about as long), after CLIPSep's further training clips (``train_more``, when
    ``p.clipsep_train_clips`` asks for them); returns the shard pattern of each split (and of
    ``train_more``) and the judge."""
    videos, shards, encoder = out / "videos", out / "shards", out / "query_encoder"
    clips = {"train": p.train_clips, "validation": p.validation_clips, "test": p.test_clips}
    more = max(0, (p.clipsep_train_clips or p.train_clips) - p.train_clips)
    parts = [*SPLITS, "train_more"] if more else list(SPLITS)

    def shard(part: str) -> tuple[str, list[str], tuple[str]]:
        return (f"shards_{part}", recipe("prepare_shards.py") + [
            str(videos / part), str(shards / part), "--prefix", part, "--clip-seconds", str(p.clip_seconds),
            "--shard-size", "32", "--clip-model", str(encoder), "--short-side", "64"], (f"videos_{part}",))

    more_videos = [("videos_train_more", _videos(videos / "train_more", "train", more, p, start=p.train_clips))
                   ] if more else []
    with runner.step("1. data: the three splits as videos, then shards with the frame embeddings of "
                     "2. a tiny CLIP aligned on captions (beside them, the timbre judge)"):
        trained = runner.lanes(
            [("videos_train", _videos(videos / "train", "train", clips["train"], p)),
             ("align_clip", recipe("align_toy_clip.py") + [str(encoder), "--steps", str(p.align_steps),
                                                             "--images", str(p.align_images)]),
             *[(f"videos_{s}", _videos(videos / s, s, clips[s], p)) for s in SPLITS[1:]],
             *[shard(s) for s in parts]],
            [*more_videos, ("train_judge", lambda: train_judge(p))],
        )
    return {part: str(shards / part / "*.tar") for part in parts}, trained["train_judge"]


def _seeded(seed: int | None) -> list[str]:
    return ["--seed_everything", str(seed)] if seed is not None else []


def _video_data(out: Path, shards: dict[str, str], train: str | None = None) -> list[str]:
    """The shard and query encoder arguments that CLIPSep and CLIPSonic training share
    (``train``: the training shards instead of the training split's)."""
    return ["--data.train_shards", train or shards["train"], "--data.val_shards", shards["validation"],
            "--data.encoder", ENCODER_NAME, "--model.query_encoder", str(out / "query_encoder")]


def clipsep_command(out: Path, p: Profile, shards: dict[str, str], folder: Path, seed: int | None = None,
                    validations: int = 4) -> list[str]:
    """``recipes/train_clipsep.py`` with ``toy.yaml`` (CLIPSep-NIT, image queries) on the
    run's shards and CLIP; the model goes to ``folder`` (its best checkpoint by validation
    SDR improvement to ``folder/best``). ``seed``: ``--seed_everything`` (default: the
    config's); ``validations``: how many times training validates."""
    amx = p.clipsep_amx_width is not None and _bf16_in_hardware()
    width = p.clipsep_amx_width if amx else p.clipsep_width
    steps = (p.clipsep_amx_steps or p.clipsep_steps) if amx else p.clipsep_steps
    every = str(max(1, steps // validations))
    train = json.dumps([shards["train"], shards["train_more"]]) if "train_more" in shards else None
    return recipe("train_clipsep.py") + [
        "fit", "--config", str(ROOT / "recipes/configs/clipsep/toy.yaml"), *_seeded(seed),
        *_video_data(out, shards, train),
        "--model.export_dir", str(folder), "--trainer.default_root_dir", str(folder),
        "--trainer.max_steps", str(steps), "--model.decay_steps", str(steps), "--model.nit_warmup_steps", str(steps // 2),
        "--trainer.val_check_interval", every, "--data.epoch_length", every,
        "--model.model_args.base_channels", str(width), "--model.model_args.mask_channels", str(width),
        *(["--trainer.precision", "bf16-mixed"] if amx else []),
        *([] if p.clipsep_distinct_queries is None else ["--data.distinct_queries", str(p.clipsep_distinct_queries)]),
    ]


def _bf16_in_hardware() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX): there bf16 autocast made
    CLIPSep's width-16 step 1.4x faster. Without it bf16 is emulated, and slower, or (AVX-512's
    bf16 dot products alone, as on a Zen 4 EPYC) 1.08x faster in the training command, too
    little to change the schedule (docs/quickstart_history.md, "bf16 without AMX")."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def prior_command(out: Path, p: Profile, shards: dict[str, str], folder: Path, seed: int | None = None) -> list[str]:
    """``recipes/train_prior.py`` on the training split's (text, image) embedding pairs -> ``folder``."""
    return recipe("train_prior.py") + [
        "fit", "--config", str(ROOT / "recipes/configs/prior/toy.yaml"), *_seeded(seed),
        "--data.shards", shards["train"], "--data.encoder", str(out / "query_encoder"),
        "--data.cache", str(out / "prior_pairs.npz"),
        "--trainer.max_steps", str(p.prior_steps), "--trainer.val_check_interval", str(p.prior_steps),
        "--trainer.default_root_dir", str(folder), "--export", str(folder),
    ]


def clipsonic_command(out: Path, p: Profile, shards: dict[str, str], folder: Path,
                      seed: int | None = None) -> list[str]:
    """``recipes/train_clipsonic.py`` with ``toy.yaml`` on the run's shards and CLIP -> ``folder``."""
    return recipe("train_clipsonic.py") + [
        "fit", "--config", str(ROOT / "recipes/configs/clipsonic/toy.yaml"), *_seeded(seed), *_video_data(out, shards),
        "--trainer.max_steps", str(p.clipsonic_steps), "--trainer.val_check_interval", str(p.clipsonic_steps),
        "--data.epoch_length", str(p.clipsonic_steps), "--trainer.default_root_dir", str(folder),
        "--export", str(folder),
    ]


def train(runner: Runner, out: Path, p: Profile, shards: dict[str, str], separations: list[tuple]) -> None:
    """Step 3: CLIPSonic on one core, CLIPSep on the other, then the prior on the first core
    free; step 5's ``separations`` (which need only CLIPSep and the prior, ``(name, args,
    needs)``) go to whichever core frees first, rather than wait for CLIPSonic."""
    with runner.step("3. training CLIPSep (image queries only), the diffusion prior and CLIPSonic; "
                     "then, beside CLIPSonic, step 5's separations"):
        runner.pool([("train_clipsonic", clipsonic_command(out, p, shards, out / "clipsonic")),
                     ("train_clipsep", clipsep_command(out, p, shards, out / "clipsep")),
                     ("train_prior", prior_command(out, p, shards, out / "prior")),
                     *separations])


def train_judge(p: Profile):
    """The timbre judge (``recipes/toy_judges.py``) on training renders: ``p.judge_clips`` of
    the instrument alone and as many with off-screen sound at the training videos' level
    (``p.judge_ensemble`` judges that vote, when more than one)."""
    from recipes.toy_judges import judge_from_renders

    return judge_from_renders(p.judge_clips, p.gen_seconds, p.judge_steps, p.offscreen, ensemble=p.judge_ensemble)


VALIDATION_SEED = 1000
"""``clipsonic generate --seed`` on the validation split. The text modes ask the same held-out
prompts on both splits, so with the test's seed (0) their validation clips would be the test
clips themselves, and the guidance chosen on them would be chosen on the test."""


def generate(out: Path, p: Profile, queries, folder: Path, mode: str, guidance: float,
             seed: int = 0) -> tuple[list[str], dict]:
    """A ``clipsonic generate --seed SEED`` command for every instrument of ``queries`` in
    one mode, and the files it writes (instrument -> paths)."""
    from clipsonic.generate_command import output_paths  # the CLI's own output names

    command = tool("clipsonic") + [
        "generate", "--checkpoint", str(out / "clipsonic"), "--overwrite", "-n", str(p.gen_samples),
        "--steps", str(p.gen_steps), "--guidance", str(guidance), "--duration", str(p.gen_seconds),
        "--mode", mode, "--seed", str(seed), "-o", str(folder)]
    if mode == "image":
        images = [str(queries.images[name]) for name in queries.instruments]
        command += [a for image in images for a in ("--image", image)]
        paths = output_paths([], images, p.gen_samples, folder, "wav")
    else:
        command += [*_templates(world.HELDOUT_TEMPLATES), *queries.instruments]
        command += ["--prior", str(out / "prior")] if mode == "pd" else []
        paths = output_paths(queries.instruments, [], p.gen_samples, folder, "wav")
    return command, dict(zip(queries.instruments, paths))


def validation_generations(out: Path, p: Profile, queries) -> list[tuple[float, str, list[str], dict]]:
    """``(guidance, mode, command, files)`` for every guidance choice and mode of step 4: the
    validation split's queries, generated with ``--seed VALIDATION_SEED``."""
    return [(guidance, mode, *generate(out, p, queries, out / "validation" / f"g{guidance:g}" / mode, mode, guidance,
                                       seed=VALIDATION_SEED))
            for guidance in p.guidance_choices for mode in MODES]


def choose_guidance(runner: Runner, out: Path, p: Profile, shards: dict[str, str], judge) -> dict:
    """Step 4: CLIPSonic's guidance per mode, chosen on the validation split (nothing to
    choose, and nothing run, when the profile offers one value)."""
    from recipes.miniature_eval import evaluate_generation, read_clips, write_queries

    if len(p.guidance_choices) == 1:
        return {"chosen": {mode: p.guidance_choices[0] for mode in MODES}, "recognition": {}}
    queries = write_queries(read_clips(shards["validation"]), out / "validation", list(world.INSTRUMENTS))
    with runner.step("4. validation: CLIPSonic's guidance scale per query mode"):
        files: dict[float, dict[str, dict]] = {g: {} for g in p.guidance_choices}
        commands = []
        for guidance, mode, command, paths in validation_generations(out, p, queries):
            files[guidance][mode] = paths
            commands.append((f"validation_{mode}_g{guidance:g}", command))
        runner.pool(commands)
        scores = {g: evaluate_generation(judge, files[g], p.gen_seconds) for g in p.guidance_choices}
    chosen = {mode: max(p.guidance_choices, key=lambda g: scores[g][mode]["recognition"]["mean"]) for mode in MODES}
    return {"chosen": chosen, "recognition": {f"{g:g}": {m: scores[g][m]["recognition"] for m in MODES}
                                              for g in p.guidance_choices}}


def test_separations(out: Path, queries, p: Profile) -> tuple[list[tuple[str, list[str], tuple[str, ...]]],
                                                             dict[str, tuple[Path, dict]]]:
    """Step 5's separations of the test mixtures: ``clipsep separate`` with image queries,
    text, text through the prior and text across the gap (``recipes/measure_gap.py`` first),
    the soft masks raised to ``p.mask_power`` (``p.mask_power_zero_shot`` for text), segments
    overlapping by ``p.overlap``.

    Returns:
        the commands, as ``(name, args, needs)`` (needs: the training commands of
        :func:`train` and the gap's measure that they wait for), and per query kind the folder
        the stems go to and the stem name of each instrument.
    """
    from clipsep.stem_files import stem_names

    mixtures = str(out / "test" / "mixtures")
    base = tool("clipsep") + ["separate", "--checkpoint", str(out / "clipsep" / "best"), "--overwrite",
                              "--format", "wav", "--bit-depth", "32f", "--overlap", f"{p.overlap:g}"]
    text = [a for name in queries.instruments for a in ("--query", name)] + _templates(world.HELDOUT_TEMPLATES)
    images = [a for name in queries.instruments for a in ("--query-image", str(queries.images[name]))]
    runs = {"image": images, "text": text, "text_prior": text + ["--prior", str(out / "prior")],
            "text_gap": text + ["--gap", str(out / "modality_gap.json")]}
    powers = {kind: p.mask_power_zero_shot if kind == "text" else p.mask_power for kind in runs}
    kinds = {"image": [("image", str(queries.images[n])) for n in queries.instruments],
             "text": [("text", n) for n in queries.instruments]}
    stems = {kind: dict(zip(queries.instruments, stem_names(kinds["image" if kind == "image" else "text"], 0)))
             for kind in runs}
    needs = {"image": ("train_clipsep",), "text": ("train_clipsep",), "text_prior": ("train_clipsep", "train_prior"),
             "text_gap": ("train_clipsep", "measure_gap")}
    gap = recipe("measure_gap.py") + ["--pairs", str(out / "prior_pairs.npz"), "-o", str(out / "modality_gap.json")]
    commands = [("measure_gap", gap, ("train_prior",)),
                *((f"separate_{kind}", base + ["--mask-power", f"{powers[kind]:g}", "-o", str(out / "separated" / kind),
                                               *args, mixtures], needs[kind]) for kind, args in runs.items())]
    return commands, {kind: (out / "separated" / kind, stems[kind]) for kind in runs}


def test(runner: Runner, out: Path, p: Profile, queries, separated: dict, judge, guidance: dict) -> dict:
    """Step 5: generation on the test split, and the scores of the separations (``separated``,
    from :func:`test_separations`, run in step 3) and of the generations."""
    from recipes.miniature_eval import evaluate_generation, evaluate_separation

    generated = {mode: generate(out, p, queries, out / "generated" / mode, mode, guidance[mode]) for mode in MODES}
    with runner.step("5. test: clipsonic generate in every mode; CLIPSep's separations (made in step 3) and the "
                     "generations scored"):
        scores = runner.lanes(
            [(f"generate_{MODES[0]}", generated[MODES[0]][0]),
             ("score_separation", lambda: evaluate_separation(queries, separated))],
            [*((f"generate_{mode}", generated[mode][0]) for mode in MODES[1:])],
        )
        scores["score_generation"] = runner.call(
            "score_generation", lambda: evaluate_generation(judge, {mode: generated[mode][1] for mode in MODES},
                                                            p.gen_seconds))
    return {"separation": scores["score_separation"], "generation": scores["score_generation"]}


def run(out: Path, profile: Profile) -> dict:
    """All six steps; returns the report (also written to ``out/report.json``)."""
    from recipes.miniature_eval import read_clips, write_queries
    from recipes.quickstart_report import clip_facts, judge_facts, print_report, write_report

    runner = Runner(out)
    total = time.perf_counter()
    torch.set_num_threads(1)  # this process scores while a command uses the other core
    shards, judge = prepare(runner, out, profile)
    queries = write_queries(read_clips(shards["test"]), out / "test", list(world.INSTRUMENTS))
    separations, separated = test_separations(out, queries, profile)
    train(runner, out, profile, shards, separations)
    guidance = choose_guidance(runner, out, profile, shards, judge)
    found = test(runner, out, profile, queries, separated, judge, guidance["chosen"])
    facts: dict[str, Any] = {
        "clip": clip_facts(out / "query_encoder", queries, shards["test"]),
        "judge": judge_facts(judge, profile.judge_clips, profile.gen_seconds, profile.offscreen),
        "guidance": guidance,
    }
    runner.seconds["total"] = round(time.perf_counter() - total, 1)
    report = write_report(out, facts, found, {"profile": asdict(profile), "seconds": runner.seconds})
    print_report(report, runner.seconds["total"], out)
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quickstart",
        description="Train CLIPSep, CLIPSonic and the prior on the miniature MUSIC world, query them with text and "
                    "images, and report how well it works on its test split (23 to 37 minutes on 2 CPU cores, by CPU and hour).",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="output folder (default: runs/quickstart)")
    parser.add_argument("--profile", choices=list(PROFILES), default="demo",
                        help="demo (the full quick start) or ci (fewer clips and steps; default: demo)")
    return parser


MARKER = ".quickstart"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors("quickstart", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    """The quick start; 0, or 1 (:data:`EXIT_PARTIAL`) when a step failed (named, with its log)."""
    out = fresh_run_folder(args.out, MARKER, "quickstart",
                           "A quick start output folder: recipes/quickstart.py replaces it when run again.\n")
    try:
        run(out, PROFILES[args.profile])
    except StepFailed as error:
        print(f"quickstart: error: {error}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The papers' comparisons on the miniature MUSIC world, with seeds, written up as a results page.

    python recipes/experiments/papers_in_miniature.py                    # the full recipe
    python recipes/experiments/papers_in_miniature.py --profile tiny --out /tmp/pim --docs /tmp/pim/docs

Data and the toy CLIP come from the quick start's first two steps (``recipes/quickstart.py``
``prepare``: train with off-screen sound, validation and test splits, each its own seed).
Then, for every seed (two in the full profile, to fit 2 hours), the project's own recipes
train (``--seed_everything SEED``):

- separation: CLIPSep and CLIPSep-NIT (image queries, CLIP embeddings), LabelSep (learned
  label queries, a supervised reference) and PIT (no query) — ``recipes/train_clipsep.py``
  with ``--model.query_mode`` — each keeping the checkpoint of highest validation SDR improvement;
- generation: the diffusion prior and CLIPSonic; CLIPSonic's guidance per mode is chosen
  on the validation split (the quick start's ``choose_guidance``).

On the test split only: ``clipsep separate`` with image and text queries (prompts never
seen in alignment) for CLIPSep and CLIPSep-NIT; LabelSep queried with its label rows and
PIT's two outputs assigned to the sources by the best permutation (the oracle), through
:class:`clipsep.separate.Separator`; ``clipsonic generate`` in image, zero-shot and prior
modes with DDIM at ``ddim_steps`` and DPM-Solver++ at ``dpm_steps``. Scores: SDR improvement
(stems of all seeds pooled, 95% intervals, paired differences stem by stem), recognition by
the timbre judges (an ensemble that votes, and each of them alone) and FAD (mel statistics
against real test clips, one value per seed and mode, a bootstrap interval over the clips).
:mod:`recipes.experiments.results_page` writes the page and checks each paper's finding
against the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from clipcore.checkpoint import git_commit  # noqa: E402
from clipcore.errors import EXIT_PARTIAL, report_errors  # noqa: E402
from clipcore.files import check_output_folder  # noqa: E402
from clipcore.miniature import world  # noqa: E402
from recipes import quickstart  # noqa: E402
from recipes.command_runner import Runner, StepFailed, fresh_run_folder, tool  # noqa: E402

MARKER = ".papers_in_miniature"


@dataclass(frozen=True)
class Profile:
    """Sizes: the world and generation settings (a quick start profile), seeds, sampler steps
    and validations per separation training (the checkpoint of highest validation SDR improvement is kept)."""

    world: quickstart.Profile
    seeds: tuple[int, ...]
    ddim_steps: int = 200
    dpm_steps: int = 25
    validations: int = 4


PROFILES = {
    # The quick start's world and training, but CLIPSep's four models at 2400 steps (the quick
    # start's 7200 to 8000 would not fit), three seeds and two generated clips per instrument and
    # mode: the 2-hour budget (95 minutes on a 2-core Intel Xeon at 44e4a1f: 11 for the data and
    # the judges, 28 a seed, 4.5 for the scores; a fourth seed would not fit). A finding holds
    # only where every seed agrees with it (results_page); the third seed was added after a
    # two-seed page (06612b3), whose pooled NIT and PIT differences it went against when run
    # alone (README).
    # CLIPSep stays at the tiny preset's width 8 in float32, on the training split's first
    # train_clips (not the quick start's further clips for CLIPSep), mixed as they come (the
    # papers' training, not the quick start's distinct queries), as the results page was made.
    # Four timbre judges vote (the quick start has one): one judge's training randomness moved
    # the recognition of the same 44 clips by 11 to 20 points; each judge more costs about 3
    # minutes of the first step.
    "full": Profile(replace(quickstart.PROFILES["demo"], gen_samples=2, clipsep_steps=2400, clipsep_amx_width=None,
                            clipsep_train_clips=None, clipsep_distinct_queries=None, judge_ensemble=4),
                    seeds=(1, 2, 3)),
    "tiny": Profile(quickstart.Profile(train_clips=22, validation_clips=11, test_clips=22, align_steps=20,
                                       align_images=22, clipsep_steps=8, prior_steps=8, clipsonic_steps=8,
                                       gen_samples=1, gen_steps=2, judge_clips=22, judge_steps=20, judge_ensemble=2,
                                       guidance_choices=(2.0,),
                                       clip_seconds=2.0),
                    seeds=(1,), ddim_steps=3, dpm_steps=2, validations=1),
}


def _model_args(noise_heads: int) -> str:
    config = yaml.safe_load((ROOT / "recipes/configs/clipsep/toy.yaml").read_text())
    return json.dumps({**config["model"]["model_args"], "noise_heads": noise_heads})


def train_commands(out: Path, seed_dir: Path, profile: Profile, shards: dict[str, str], seed: int) -> dict:
    """The training commands of one seed: name -> args (CLIPSep variants, prior, CLIPSonic),
    the quick start's commands with the seed, each model in ``seed_dir/<name>``."""
    p = profile.world

    def clipsep(name: str, noise_heads: int, *args: str) -> list[str]:
        return quickstart.clipsep_command(out, p, shards, seed_dir / name, seed, profile.validations) + [
            "--model.model_args", _model_args(noise_heads), *args]

    return {
        "clipsep": clipsep("clipsep", 0),
        "nit": clipsep("nit", 2),
        "label": clipsep("label", 0, "--model.query_mode", "label", "--model.labels", json.dumps(list(world.INSTRUMENTS))),
        "pit": clipsep("pit", 0, "--model.query_mode", "pit", "--model.pit_outputs", "2"),
        "prior": quickstart.prior_command(out, p, shards, seed_dir / "prior", seed),
        "clipsonic": quickstart.clipsonic_command(out, p, shards, seed_dir / "clipsonic", seed),
    }


def separate_with_tables(checkpoint: Path, encoder: Path, queries, folder: Path) -> dict[str, str]:
    """LabelSep and PIT on the test mixtures, stems written as ``clipsep separate`` does.

    LabelSep: each instrument's stem from its label's learned query. PIT: its outputs are
    assigned to the two sources by the permutation of highest mean SDR (the oracle).

    Returns:
        instrument -> stem name (the files are ``folder/<mixture>/<stem>.wav``).
    """
    from clipcore.audio import load_audio, save_audio
    from clipsep.metrics import separation_scores
    from clipsep.separate import Separator

    separator = Separator.from_pretrained(checkpoint, query_encoder=encoder)
    provenance = separator.model.provenance or {}
    table = separator.model.learned_query.weight.detach()
    names = [name.replace(" ", "-") for name in queries.instruments]
    for path, sources in queries.mixtures:
        wave, rate = load_audio(path, mono=True)
        if provenance.get("query_mode") == "label":
            rows = [provenance["labels"].index(name) for name in queries.instruments]
            stems = dict(zip(names, separator.separate(wave, rate, table[rows]).stems[:, 0]))
        else:
            outputs = separator.separate(wave, rate, table).stems[:, 0, : len(sources[0][1])]
            targets = np.stack([s for _, s in sources])
            mix = np.broadcast_to(targets.sum(0), targets.shape)
            orders = [[0, 1], [1, 0]]
            means = [np.nanmean(separation_scores(targets, mix - targets, outputs[o].numpy(), mix)["sdr"])
                     for o in orders]
            best = orders[int(np.nanargmax(means))]
            stems = {label.replace(" ", "-"): outputs[k] for (label, _), k in zip(sources, best)}
        for name, stem in stems.items():
            save_audio(folder / path.stem / f"{name}.wav", stem[None].float(), rate, bit_depth="32f")
    return dict(zip(queries.instruments, names))


def kept_checkpoint(folder: Path) -> Path:
    """``folder/best`` (highest validation SDR improvement), or ``folder/last`` when no
    validation gave a finite one (a tiny run's silent estimates), said on the console."""
    if (folder / "best").is_dir():
        return folder / "best"
    print(f"    {folder.name}: no validation gave a finite SDR improvement; using the last model", flush=True)
    return folder / "last"


def run_seed(runner: Runner, out: Path, p: Profile, shards: dict[str, str], seed: int, queries, judge) -> dict:
    """Train, choose on validation and test one seed; returns where its outputs are."""
    from clipsep.stem_files import stem_names

    seed_dir = out / f"seed{seed}"
    commands = train_commands(out, seed_dir, p, shards, seed)
    with runner.step(f"seed {seed}: training CLIPSep, CLIPSep-NIT, LabelSep, PIT, the prior and CLIPSonic"):
        runner.lanes([(f"seed{seed}_{n}", commands[n]) for n in ("clipsep", "nit", "label")],
                     [(f"seed{seed}_{n}", commands[n]) for n in ("pit", "prior", "clipsonic")])
    guidance = quickstart.choose_guidance(runner, seed_dir, p.world, shards, judge)["chosen"]
    mixtures = str(out / "test" / "mixtures")
    kinds = {"image": ([("image", str(queries.images[n])) for n in queries.instruments],
                       [a for n in queries.instruments for a in ("--query-image", str(queries.images[n]))]),
             "text": ([("text", n) for n in queries.instruments],
                      [a for n in queries.instruments for a in ("--query", n)]
                      + [a for t in world.HELDOUT_TEMPLATES for a in ("--template", t)])}
    separated, lanes = {}, [[], []]
    for model in ("clipsep", "nit"):
        for kind, (rows, args) in kinds.items():
            folder = seed_dir / "separated" / f"{model}_{kind}"
            separated[f"{model}_{kind}"] = (folder, dict(zip(queries.instruments, stem_names(rows, 0))))
            lanes[0].append((f"seed{seed}_separate_{model}_{kind}", tool("clipsep") + [
                "separate", "--checkpoint", str(kept_checkpoint(seed_dir / model)), "--overwrite", "--format", "wav",
                "--bit-depth", "32f", "-o", str(folder), *args, mixtures]))
    generated = {}
    for sampler, steps in (("ddim", p.ddim_steps), ("dpm++", p.dpm_steps)):
        world_p = replace(p.world, gen_steps=steps)
        for mode in quickstart.MODES:
            folder = seed_dir / "generated" / f"{sampler}_{mode}"
            command, generated[(sampler, mode)] = quickstart.generate(seed_dir, world_p, queries, folder, mode,
                                                                      guidance[mode])
            # DDIM's long runs beside the separations: zero-shot and prior in one lane, the rest in the other
            lane = 1 if (sampler, mode) in (("ddim", "zs"), ("ddim", "pd")) else 0
            lanes[lane].append((f"seed{seed}_generate_{sampler}_{mode}", command + ["--sampler", sampler]))
    for model in ("label", "pit"):
        folder = seed_dir / "separated" / model
        lanes[0].append((f"seed{seed}_separate_{model}", lambda m=model, f=folder: separated.__setitem__(
            m, (f, separate_with_tables(kept_checkpoint(seed_dir / m), out / "query_encoder", queries, f)))))
    with runner.step(f"seed {seed}: test separation and generation"):
        runner.lanes(*lanes)
    return {"separated": separated, "generated": generated, "guidance": guidance}


def run(out: Path, name: str, docs: Path) -> dict:
    """Everything, with the profile ``name``; returns the results (also ``out/results.json``)
    and writes the page into ``docs``."""
    profile = PROFILES[name]
    from recipes.experiments.results_page import score, write_page
    from recipes.miniature_eval import read_clips, write_queries

    runner = Runner(out)
    start = time.perf_counter()
    torch.set_num_threads(1)
    shards, judge = quickstart.prepare(runner, out, profile.world)
    test_clips = read_clips(shards["test"])
    queries = write_queries(test_clips, out / "test", list(world.INSTRUMENTS))
    seeds = {seed: run_seed(runner, out, profile, shards, seed, queries, judge) for seed in profile.seeds}
    results = runner.call("score", lambda: score(seeds, queries, judge, test_clips, profile.world.gen_seconds))
    runner.seconds["total"] = round(time.perf_counter() - start, 1)
    results["run"] = {"name": name, "profile": asdict(profile), "seconds": runner.seconds, "commit": git_commit(ROOT)}
    page = write_page(results, seeds, docs)  # adds the findings
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults page: {page}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="papers_in_miniature",
        description="The CLIPSep and CLIPSonic papers' comparisons on the miniature MUSIC world, with seeds and 95% "
                    "intervals; writes docs/results.md (full profile: about 95 minutes on 2 CPU cores).")
    parser.add_argument("--profile", choices=list(PROFILES), default="full", help="full or tiny (default: full)")
    parser.add_argument("--out", type=Path, default=Path("runs/papers_in_miniature"), help="run folder")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="where results.md and its images go")
    args = parser.parse_args(argv)
    return report_errors("papers_in_miniature", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    check_output_folder(args.docs, "--docs")  # written last, after about 95 minutes
    out = fresh_run_folder(args.out, MARKER, "papers_in_miniature",
                           "An output folder of recipes/experiments/papers_in_miniature.py (replaced when run again).\n")
    try:
        run(out, args.profile, args.docs.resolve())
    except StepFailed as error:
        print(f"papers_in_miniature: error: {error}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


if __name__ == "__main__":
    sys.exit(main())

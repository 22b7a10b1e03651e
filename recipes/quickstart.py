"""The quick start: both systems learned from toy videos, then asked with text, on a CPU.

    make demo                                   # installs once, then runs this
    python recipes/quickstart.py                # the same, in a ready environment
    python recipes/quickstart.py --profile ci --out /tmp/quickstart   # the CI-sized run

Every step runs the recipe or command a user would type (printed as ``$ ...``, its output
in ``OUT/logs/``); two independent commands share the two cores where they can:

1. data: the toy instrument world (``clipcore.synthetic``) as video files, training clips
   (seed 0, with off-screen noise) and held-out clips (seed 1, clean), cut into shards by
   ``recipes/prepare_shards.py --clip-model`` with the aligned CLIP of step 2;
2. ``recipes/align_toy_clip.py``: a tiny open_clip CLIP aligned on (caption, picture)
   pairs of the toy world, the stand-in for pretrained CLIP -> ``OUT/query_encoder``;
3. ``recipes/train_clipsep.py`` (CLIPSep with noise heads, image queries only),
   ``recipes/train_prior.py`` and ``recipes/train_clipsonic.py``, each with its
   ``configs/*/toy.yaml`` and command-line overrides -> ``OUT/clipsep``, ``OUT/prior``,
   ``OUT/clipsonic``;
4. ``clipsep separate`` on held-out two-instrument mixtures, with text queries ("playing
   the <instrument>": zero-shot, CLIPSep never saw text) and image queries (a held-out
   frame), and ``clipsonic generate "<instrument>"`` in image, zero-shot and prior modes;
5. the report (``OUT/report.json``, details in ``OUT/details.json``): SDR improvement of
   the separated stems over the mixtures, and how often a small instrument classifier
   trained on real toy audio recognises the queried instrument in generated clips.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing: clipcore & co.

import torch  # noqa: E402

from clipcore.errors import EXIT_PARTIAL, UsageError, report_errors  # noqa: E402
from clipcore.files import atomic_write  # noqa: E402
from recipes.toy_judges import (  # noqa: E402
    evaluate_generation,
    evaluate_separation,
    read_clips,
    train_judge,
    write_queries,
)


@dataclass(frozen=True)
class Profile:
    """How big each step is."""

    train_clips: int
    heldout_clips: int
    align_steps: int
    clipsep_steps: int
    prior_steps: int
    clipsonic_steps: int
    gen_samples: int
    gen_steps: int
    gen_guidance: float = 5.0
    noise: float = 0.2
    clip_seconds: float = 5.0
    gen_seconds: float = 1.0


PROFILES = {
    "demo": Profile(train_clips=256, heldout_clips=64, align_steps=200, clipsep_steps=2600, prior_steps=600,
                    clipsonic_steps=1000, gen_samples=5, gen_steps=15),
    "ci": Profile(train_clips=96, heldout_clips=32, align_steps=100, clipsep_steps=600, prior_steps=200,
                  clipsonic_steps=150, gen_samples=2, gen_steps=10),
}

ENCODER_NAME = "clip-toy"


class StepFailed(RuntimeError):
    """A command of the quick start failed; the message names it and its log."""


class Runner:
    """Runs commands, prints them, logs their output, and times the steps."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}

    def command(self, name: str, args: list[str], threads: int = 1) -> None:
        """Run one command to completion (output in ``logs/<name>.log``)."""
        shown = " ".join(_quote(_show(a)) for a in args)
        print(f"  $ {shown}", flush=True)
        log = self.logs / f"{name}.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": _pythonpath(),
               "TQDM_MININTERVAL": "5"}  # progress bars in log files: a line every 5 s
        start = time.perf_counter()
        with open(log, "w") as handle:
            handle.write(f"$ {shown}\n")
            handle.flush()
            status = subprocess.run(args, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
        self.seconds[name] = round(time.perf_counter() - start, 1)
        if status != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
            raise StepFailed(f"{name} failed (exit status {status}); the end of {log}:\n{tail}")
        print(f"    {name}: done in {self.seconds[name]:.0f} s", flush=True)

    def call(self, name: str, function: Callable[[], Any]) -> Any:
        """Run a function of this process, timed."""
        print(f"  > {name}", flush=True)
        start = time.perf_counter()
        value = function()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        print(f"    {name}: done in {self.seconds[name]:.0f} s", flush=True)
        return value

    def lanes(self, *lanes: list[tuple]) -> None:
        """Run lanes side by side. Each lane is a list of ``(name, args)`` commands and
        ``(name, function)`` calls of this process, run in order."""

        def run(lane):
            for name, work in lane:
                if callable(work):
                    self.call(name, work)
                else:
                    self.command(name, work, threads=1 if len(lanes) > 1 else 2)

        with ThreadPoolExecutor(len(lanes)) as pool:
            for future in [pool.submit(run, lane) for lane in lanes]:
                future.result()

    def step(self, title: str):
        """A context that prints the step's title and records its wall time."""
        return _Step(self, title)


class _Step:
    def __init__(self, runner: Runner, title: str) -> None:
        self.runner, self.title = runner, title

    def __enter__(self):
        print(f"\n== {self.title}", flush=True)
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        seconds = round(time.perf_counter() - self.start, 1)
        self.runner.seconds[f"step: {self.title}"] = seconds
        if exc[0] is None:
            print(f"   ({seconds:.0f} s)", flush=True)


def _show(arg: str) -> str:
    """An argument as a user would type it: ``python``, tool names, relative paths."""
    if arg == sys.executable:
        return "python"
    if Path(arg).parent == Path(sys.executable).parent:
        return Path(arg).name
    path = Path(arg)
    return str(path.relative_to(Path.cwd())) if path.is_absolute() and path.is_relative_to(Path.cwd()) else arg


def _quote(arg: str) -> str:
    """Shell quoting that reads well: double quotes where they are enough."""
    if shlex.quote(arg) == arg or any(c in arg for c in '"$`\\!'):
        return shlex.quote(arg)
    return f'"{arg}"'


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def _tool(name: str) -> list[str]:
    """The console script of a project CLI (``clipsep``, ``clipsonic``)."""
    script = Path(sys.executable).with_name(name)
    return [str(script)] if script.exists() else [sys.executable, "-m", f"{name}.cli"]


def _recipe(name: str) -> list[str]:
    return [sys.executable, str(ROOT / "recipes" / name)]


def _videos_code(folder: Path, clips: int, seed: int, noise: float, seconds: float) -> list[str]:
    code = (f"from clipcore import synthetic; synthetic.write_toy_videos({str(folder)!r}, {clips}, seed={seed}, "
            f"noise={noise}, duration={seconds})")
    return [sys.executable, "-c", code]


def run(out: Path, profile: Profile) -> dict:
    """All five steps; returns the report (also written to ``out/report.json``)."""
    runner = Runner(out)
    total = time.perf_counter()
    videos, shards, encoder = out / "videos", out / "shards", out / "query_encoder"
    p = profile
    torch.set_num_threads(1)  # this process scores while a command uses the other core
    with runner.step("1. data: the toy world as videos (beside it, 2. a tiny CLIP aligned on toy captions)"):
        runner.lanes(
            [("videos_train", _videos_code(videos / "train", p.train_clips, 0, p.noise, p.clip_seconds))],
            [("align_clip", _recipe("align_toy_clip.py") + [str(encoder), "--steps", str(p.align_steps), "--world",
                                                             "shapes", "--gap-weight", "0", "--images", "64",
                                                             "--groups", "8"]),
             ("videos_heldout", _videos_code(videos / "heldout", p.heldout_clips, 1, 0.0, p.clip_seconds))],
        )
    with runner.step("1. data: shards, with the aligned CLIP's frame embeddings precomputed"):
        common = ["--clip-seconds", str(p.clip_seconds), "--shard-size", "32", "--clip-model", str(encoder)]
        runner.lanes(
            [("shards_train", _recipe("prepare_shards.py") + [str(videos / "train"), str(shards / "train"),
                                                              "--prefix", "train", *common])],
            [("shards_heldout", _recipe("prepare_shards.py") + [str(videos / "heldout"), str(shards / "heldout"),
                                                                "--prefix", "heldout", *common])],
        )
    train_glob, heldout_glob = str(shards / "train" / "*.tar"), str(shards / "heldout" / "*.tar")
    with runner.step("3. training CLIPSep (image queries only), the diffusion prior and CLIPSonic"):
        clipsep = _recipe("train_clipsep.py") + [
            "fit", "--config", str(ROOT / "recipes/configs/clipsep/toy.yaml"),
            "--data.train_shards", train_glob, "--data.val_shards", heldout_glob, "--data.encoder", ENCODER_NAME,
            "--model.query_encoder", str(encoder), "--model.export_dir", str(out / "clipsep"),
            "--trainer.default_root_dir", str(out / "clipsep"), "--trainer.max_steps", str(p.clipsep_steps),
            "--model.decay_steps", str(p.clipsep_steps), "--model.nit_warmup_steps", str(p.clipsep_steps // 2),
            "--trainer.val_check_interval", str(p.clipsep_steps // 2),
            "--data.epoch_length", str(p.clipsep_steps // 2),
        ]
        prior = _recipe("train_prior.py") + [
            "fit", "--config", str(ROOT / "recipes/configs/prior/toy.yaml"),
            "--data.shards", train_glob, "--data.encoder", str(encoder), "--data.cache", str(out / "prior_pairs.npz"),
            "--trainer.max_steps", str(p.prior_steps), "--trainer.val_check_interval", str(p.prior_steps),
            "--trainer.default_root_dir", str(out / "prior"), "--export", str(out / "prior"),
        ]
        clipsonic = _recipe("train_clipsonic.py") + [
            "fit", "--config", str(ROOT / "recipes/configs/clipsonic/toy.yaml"),
            "--data.train_shards", train_glob, "--data.val_shards", heldout_glob, "--data.encoder", ENCODER_NAME,
            "--model.query_encoder", str(encoder), "--trainer.max_steps", str(p.clipsonic_steps),
            "--trainer.val_check_interval", str(p.clipsonic_steps), "--data.epoch_length", str(p.clipsonic_steps),
            "--trainer.default_root_dir", str(out / "clipsonic"), "--export", str(out / "clipsonic"),
        ]
        runner.lanes([("train_clipsep", clipsep), ("train_prior", prior)], [("train_clipsonic", clipsonic)])
    with runner.step("4. the real tools on held-out queries: clipsep separate, clipsonic generate"):
        clips = read_clips(heldout_glob)
        queries = write_queries(clips, out / "eval")
        separate = _tool("clipsep") + [
            "separate", "--checkpoint", str(out / "clipsep" / "last"), "-o", str(out / "separated"), "--overwrite",
            "--format", "wav", "--bit-depth", "32f",
            *[a for q in queries.instruments for a in ("--query", queries.text[q])],
            *[a for q in queries.instruments for a in ("--query-image", str(queries.images[q]))],
            str(out / "eval" / "mixtures"),
        ]
        generate = _tool("clipsonic") + [
            "generate", "--checkpoint", str(out / "clipsonic"), "--overwrite", "-n", str(p.gen_samples),
            "--steps", str(p.gen_steps), "--guidance", str(p.gen_guidance), "--duration", str(p.gen_seconds),
        ]
        found: dict[str, Any] = {}
        runner.lanes(
            [("separate", separate),
             ("score_separation", lambda: found.update(separation=evaluate_separation(queries, out / "separated"))),
             ("train_judge", lambda: found.update(judge=train_judge(queries.instruments, train_glob, heldout_glob,
                                                                    p.gen_seconds)))],
            [("generate_image", generate + ["--mode", "image", "-o", str(out / "generated" / "image"),
                                            *[a for q in queries.instruments for a in ("--image", str(queries.images[q]))]]),
             ("generate_zs", generate + ["--mode", "zs", "-o", str(out / "generated" / "zs"), *queries.instruments]),
             ("generate_pd", generate + ["--mode", "pd", "--prior", str(out / "prior"), "-o",
                                         str(out / "generated" / "pd"), *queries.instruments])],
        )
    with runner.step("5. the report"):
        classifier, real_accuracy = found["judge"]
        separation = found["separation"]
        generation = {"classifier_accuracy_real": real_accuracy,
                      **evaluate_generation(classifier, queries, out / "generated", p.gen_seconds)}
    report = {
        "clipsep": {"sdri_image_db": separation["sdri_image_db"], "sdri_text_db": separation["sdri_text_db"]},
        "clipsonic": {key: generation[key] for key in ("recognition_image", "recognition_zs", "recognition_pd")},
        "n_instruments": len(queries.instruments),
    }
    runner.seconds["total"] = round(time.perf_counter() - total, 1)
    details = {"profile": asdict(profile), "seconds": runner.seconds, "separation": separation,
               "generation": generation, "alignment": _alignment_facts(encoder)}
    for name, content in (("report.json", report), ("details.json", details)):
        atomic_write(out / name, lambda tmp: tmp.write_text(json.dumps(content, indent=2) + "\n"))
    print_report(report, details, out)
    return report


def _alignment_facts(encoder: Path) -> dict:
    provenance = json.loads((encoder / "config.json").read_text()).get("provenance") or {}
    return {k: v for k, v in provenance.items() if k.startswith(("retrieval", "chance", "final"))}


def print_report(report: dict, details: dict, out: Path) -> None:
    """The short report on the terminal."""
    sep, sonic, n = report["clipsep"], report["clipsonic"], report["n_instruments"]
    print(f"""
================ quick start report ({n} toy instruments, held-out clips) ================
CLIPSep, trained with image queries only, separating two-instrument mixtures:
  SDR improvement with an image query            {sep['sdri_image_db']:6.2f} dB   (goal >= 6 dB)
  SDR improvement with a text query (zero-shot)  {sep['sdri_text_db']:6.2f} dB   (goal >= 4 dB)
CLIPSonic, trained on (frame, audio) pairs only; a classifier trained on real toy audio
(accuracy on real held-out audio {details['generation']['classifier_accuracy_real']:.0%}) names the instrument of generated clips:
  image query                                    {sonic['recognition_image']:6.0%}     (goal >= 70%)
  text query, zero-shot (CLIP text embedding)    {sonic['recognition_zs']:6.0%}
  text query through the diffusion prior         {sonic['recognition_pd']:6.0%}     (goal >= 50%)
  chance                                         {1 / n:6.0%}
Wall time: {details['seconds']['total'] / 60:.1f} min. Everything is under {out}/: report.json, details.json,
query_encoder/, clipsep/, prior/, clipsonic/, separated/, generated/, logs/.""", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quickstart",
        description="Train CLIPSep, CLIPSonic and the prior on the toy instrument world, query them with "
                    "text and images, and report how well it works (about 10 minutes on 2 CPU cores).",
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
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise UsageError(f"{args.out} is not empty and not a quick start folder; choose another --out.")
        print(f"quickstart: replacing the previous run in {args.out}", flush=True)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("A quick start output folder: recipes/quickstart.py replaces it when run again.\n")
    try:
        run(out, PROFILES[args.profile])
    except StepFailed as error:
        print(f"quickstart: error: {error}", file=sys.stderr)
        return EXIT_PARTIAL
    return 0


if __name__ == "__main__":
    sys.exit(main())

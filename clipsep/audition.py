"""``clipsep audition``: a local page to try queries by ear.

::

    clipsep audition --checkpoint runs/quickstart/clipsep/best [--prior runs/quickstart/prior] \\
        [--gap runs/quickstart/modality_gap.json]

Drop audio files, give text queries (one per line) and/or image queries (text as CLIP gives
it, or, when the page was given them, through the diffusion prior or across the modality
gap), and each file's stems play beside their spectrograms, with the residual (the mixture
minus all stems); "download all" is a zip of the stems and each file's ``separation.json``,
as ``clipsep separate`` writes them. Files are separated streaming, as by ``clipsep separate``
(:func:`clipsep.batch.process_file`), so a long file takes memory that does not grow with
its length. A bad file or query shows the command line's one-line message and the page
goes on serving.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from clipcore.audition import (
    add_server_arguments,
    check_server_arguments,
    import_gradio,
    new_run_folder,
    serve,
    spectrogram_png,
    zip_folder,
)
from clipcore.cli import add_device_argument, resolve_device
from clipcore.errors import ClipAudioError, UsageError
from clipcore.files import load_image, remove_empty_folders
from clipcore.modality_gap import text_modes
from clipsep.batch import OutputOptions, input_seconds, plan, process_file
from clipsep.masks import check_mask_power
from clipsep.separation_record import run_record
from clipsep.stem_files import RESIDUAL, stem_names

__all__ = ["StemView", "SeparationView", "AuditionSeparator", "add_audition_command", "TEXT_MODES"]

TEXT_MODES = {"zs": "as CLIP gives them", "pd": "through the diffusion prior", "gap": "across the modality gap"}
"""How the page can carry text queries to the model: their names, and the page's words."""


@dataclass(frozen=True)
class StemView:
    """One stem on the page: its input's name, its name, its audio and spectrogram files."""

    source: str
    name: str
    audio: Path
    image: Path


@dataclass
class SeparationView:
    """What one press of "Separate" shows: the stems, one line per failed input, the zip."""

    stems: list[StemView] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    archive: Path | None = None

    @property
    def summary(self) -> str:
        inputs = len({stem.source for stem in self.stems})
        lines = [f"Separated {inputs} of {inputs + len(self.failures)} inputs."] + self.failures
        return "\n".join(lines)


class AuditionSeparator:
    """The page's work, without the page: separate uploaded files into a run folder.

    Args:
        separator: a :class:`clipsep.separate.Separator`.
        checkpoint: where its model came from (for ``separation.json``).
        work_dir: where each run's folder goes (``run-1``, ``run-2``, ...).
        prior: a diffusion prior folder for text queries, or None (the page then offers no prior).
        prior_seed: the prior's seed.
        gap: a modality-gap file for text queries, or None (the page then offers no crossing).
    """

    def __init__(self, separator, checkpoint: str | Path, work_dir: str | Path, prior: str | Path | None = None,
                 prior_seed: int = 0, gap: str | Path | None = None):
        ways = {"gap": lambda: separator.with_gap(gap), "pd": lambda: separator.with_prior(prior, prior_seed),
                "zs": lambda: separator}
        self.separators = {mode: ways[mode]() for mode in text_modes(gap=gap is not None, prior=prior is not None)}
        self.checkpoint, self.prior, self.prior_seed, self.gap = Path(checkpoint), prior, prior_seed, gap
        self.work_dir = Path(work_dir)

    @property
    def text_modes(self) -> list[str]:
        """The names of :data:`TEXT_MODES` this page offers, the default first: ``"gap"`` when
        started with a gap, ``"pd"`` with a prior, and ``"zs"`` always
        (:func:`clipcore.modality_gap.text_modes`)."""
        return list(self.separators)

    def separate(self, files: list[str], texts: str, images: list[str], text_mode: str | None = None,
                 progress: Callable[[float, str], None] | None = None) -> SeparationView:
        """Separate ``files`` with the queries: ``texts`` one per line, ``images`` files.

        Args:
            files: audio files.
            texts: text queries, one per line (blank lines and repeats dropped).
            images: image files, each a query.
            text_mode: how text queries reach the model, a name of :data:`TEXT_MODES`; by
                default the first of :attr:`text_modes`.
            progress: called with the fraction done and the file being separated.

        Raises:
            UsageError: no files, no queries, an unreadable image, or a text mode the page
                was not given. Failed inputs are not raised: they are the view's
                ``failures``.
        """
        queries = [("text", line.strip()) for line in dict.fromkeys(texts.splitlines()) if line.strip()]
        queries += [("image", image) for image in dict.fromkeys(images)]
        if not files:
            raise UsageError("drop one or more audio files to separate.")
        if not queries:
            raise UsageError("give at least one text query or image query.")
        for kind, value in queries:
            if kind == "image":
                load_image(value)  # an ImageError names the file
        text_mode = text_mode or self.text_modes[0]
        if text_mode not in self.separators:
            option = {"pd": "--prior", "gap": "--gap"}.get(text_mode)
            raise UsageError(f"this page was started without {option}, so text queries cannot go "
                             f"{TEXT_MODES[text_mode]}." if option else f"unknown text mode {text_mode!r}.")
        separator = self.separators[text_mode]
        embeddings = separator.encode_queries([value if kind == "text" else Path(value) for kind, value in queries])
        folder = new_run_folder(self.work_dir)
        settings = {"overlap": round(separator.overlap_samples / separator.segment_samples, 4), "mono": False,
                    "batch_size": separator.batch_size, "format": "wav", "bit_depth": "16", "clip_mode": "rescale",
                    "prior": {"path": str(Path(self.prior).resolve()), "seed": self.prior_seed}
                    if text_mode == "pd" else None,
                    "gap": str(Path(self.gap).resolve()) if text_mode == "gap" else None}
        options = OutputOptions(residual=True, provenance=run_record(queries, separator, self.checkpoint, settings))
        sources = [Path(file) for file in files]
        jobs = plan(sources, folder / "stems", stem_names(queries, 0), options, 0)
        seconds = [input_seconds(source) for source in sources]
        total, done = max(sum(seconds), 1e-9), 0.0
        view = SeparationView()
        for job, length in zip(jobs, seconds):
            def advance(step: float, name: str = job.source.name) -> None:
                nonlocal done
                done = min(done + step, total)
                if progress is not None:
                    progress(done / total, name)

            result = process_file(job, separator, embeddings, replace(options, error_log=folder / "errors.log"),
                                  advance)
            if result.error:
                view.failures.append(f"{job.source.name}: {result.error}")
                continue
            for name, audio in job.outputs.items():
                title = f"{job.source.name}: {name}" + (" (the mixture minus all stems)" if name == RESIDUAL else "")
                image = spectrogram_png(audio, folder / "images" / job.folder.name / f"{name}.png", title)
                view.stems.append(StemView(job.source.name, name, audio, image))
        if view.stems:
            view.archive = zip_folder(folder / "stems", folder / "stems.zip")
        else:
            remove_empty_folders(folder)  # a run of failures leaves nothing (but an errors.log)
        return view


def build_page(audition: AuditionSeparator):
    """The Gradio page (Blocks) on ``audition``."""
    gr = import_gradio()
    with gr.Blocks(title="CLIPSep audition") as page:
        gr.Markdown("# CLIPSep audition\nDrop audio files, describe the sounds to pull out, and listen.")
        with gr.Row():
            files = gr.File(label="audio files", file_count="multiple", type="filepath", elem_id="files")
            images = gr.File(label="image queries (optional)", file_count="multiple", type="filepath",
                             file_types=["image"], elem_id="images")
        texts = gr.Textbox(label="text queries, one per line", lines=3, placeholder="playing violin",
                           elem_id="texts")
        modes = audition.text_modes
        text_mode = gr.Radio([(TEXT_MODES[m], m) for m in modes], value=modes[0], label="text queries",
                             visible=len(modes) > 1, elem_id="text-mode")
        run = gr.Button("Separate", variant="primary", elem_id="separate")
        status = gr.Textbox(label="messages", interactive=False, elem_id="status")
        archive = gr.File(label="download all (stems and separation.json)", interactive=False, elem_id="download")
        stems = gr.State([])

        def separate(files, texts, images, text_mode, progress=gr.Progress()):
            try:
                view = audition.separate(files or [], texts or "", images or [], text_mode,
                                         lambda fraction, name: progress(fraction, desc=f"separating {name}"))
            except ClipAudioError as error:
                return f"error: {error}", [], None
            return view.summary, view.stems, None if view.archive is None else str(view.archive)

        run.click(separate, [files, texts, images, text_mode], [status, stems, archive])

        @gr.render(inputs=stems)
        def show(views):
            for view in views:
                with gr.Row(equal_height=True):
                    gr.Audio(str(view.audio), label=f"{view.source}: {view.name}", type="filepath", format="wav",
                             waveform_options=gr.WaveformOptions(show_recording_waveform=False),
                             interactive=False, scale=1, elem_classes=["stem"])
                    gr.Image(str(view.image), show_label=False, interactive=False, scale=2)
    return page


def run_audition(args: argparse.Namespace) -> int:
    """Run ``clipsep audition``: load the separator and serve the page until Ctrl-C."""
    import_gradio()  # before the model loads: a missing extra is said at once
    check_server_arguments(args)
    from clipsep.batch import SeparatorSpec

    check_mask_power(args.mask_power, name="--mask-power")
    separator = SeparatorSpec(args.checkpoint, args.query_encoder, mask_power=args.mask_power).load(
        resolve_device(args.device))
    serve(lambda work_dir: build_page(AuditionSeparator(separator, args.checkpoint, work_dir, args.prior,
                                                        args.prior_seed, args.gap)), args, "clipsep-audition")
    return 0


def add_audition_command(subparsers: "argparse._SubParsersAction") -> None:
    """Register ``clipsep audition``."""
    parser = subparsers.add_parser(
        "audition", help="a local page to try queries by ear (needs clipaudio[app])",
        description="Serve a page on this machine where audio files are separated with text and image queries "
                    "and each stem plays beside its spectrogram.")
    parser.add_argument("--checkpoint", required=True,
                        help="a CLIPSep checkpoint folder, or the official checkpoint file (with --query-encoder)")
    parser.add_argument("--query-encoder", default=None, metavar="SPEC",
                        help="query encoder folder or open_clip spec (default: the checkpoint's own)")
    parser.add_argument("--prior", default=None, metavar="DIR",
                        help="a diffusion prior folder: the page then offers text queries through it")
    parser.add_argument("--prior-seed", type=int, default=0, help="seed of the prior's sampling (default: 0)")
    parser.add_argument("--mask-power", type=float, default=1.0, metavar="P",
                        help="soft masks raised to this power, as clipsep separate --mask-power (default: 1)")
    parser.add_argument("--gap", default=None, metavar="FILE",
                        help="a modality-gap file (recipes/measure_gap.py): the page then offers text queries "
                             "carried across the gap")
    add_device_argument(parser)
    add_server_arguments(parser)
    parser.set_defaults(run=run_audition)

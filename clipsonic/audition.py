"""``clipsonic audition``: a local page to try prompts by ear.

::

    clipsonic audition --checkpoint runs/quickstart/clipsonic [--prior runs/quickstart/prior] \\
        [--gap runs/quickstart/modality_gap.json]

Give a prompt (or an image, in image mode), choose the mode (image, zero-shot text, text
through the diffusion prior when there is one, text across the modality gap when a gap
file is given), the sampler steps, guidance, seed and number of clips; each clip plays
beside its mel spectrogram. A bad value shows the command line's one-line message and the
page goes on serving.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipcore.audio import save_audio
from clipcore.audition import add_server_arguments, check_server_arguments, import_gradio, new_run_folder, serve
from clipcore.cli import add_device_argument, resolve_device
from clipcore.errors import ClipAudioError, UsageError
from clipcore.files import load_image
from clipcore.plots import mel_figure, save_figure
from clipsonic.generation_limits import MODES

if TYPE_CHECKING:
    from clipsonic.generate import Generator

__all__ = ["ClipView", "AuditionGenerator", "add_audition_command"]

MODE_NAMES = {"image": "image", "zs": "text, zero-shot", "pd": "text through the prior",
              "gap": "text across the modality gap"}


@dataclass(frozen=True)
class ClipView:
    """One generated clip on the page: its title, audio and mel image files."""

    title: str
    audio: Path
    image: Path


class AuditionGenerator:
    """The page's work, without the page: generate clips into a run folder.

    Args:
        generator: a :class:`clipsonic.generate.Generator`.
        work_dir: where each run's folder goes (``run-1``, ``run-2``, ...).
    """

    def __init__(self, generator: Generator, work_dir: str | Path):
        self.generator = generator
        self.work_dir = Path(work_dir)

    @property
    def modes(self) -> list[str]:
        """The modes this generator offers (``pd`` only with a prior, ``gap`` only with a gap)."""
        return [mode for mode in MODES if mode == "image" or mode in self.generator.text_modes]

    def generate(self, prompt: str, image: str | None, mode: str, steps: int, guidance: float, seed: int, count: int,
                 duration: float) -> list[ClipView]:
        """``count`` clips of ``duration`` seconds for the prompt (modes ``zs``, ``pd``, ``gap``) or
        the image (mode ``image``); clip ``k`` uses seed ``seed + k``.

        Raises:
            UsageError: a missing or wrong kind of query, or a bad value (one sentence).
        """
        if mode not in self.modes:
            raise UsageError(f"mode {mode!r} is not available here; choose one of {', '.join(self.modes)}.")
        if mode == "image" and not image:
            raise UsageError("image mode needs an image query.")
        if mode != "image" and not (prompt or "").strip():
            raise UsageError(f"{MODE_NAMES[mode]} needs a text prompt.")
        for name, value in (("steps", steps), ("seed", seed), ("clips", count)):
            if value is None or not math.isfinite(value) or value != int(value):
                raise UsageError(f"{name} must be a whole number, got {value}.")
        for name, value in (("guidance", guidance), ("seconds per clip", duration)):
            if value is None or not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number, got {value}.")
        query = {"image": load_image(image)} if mode == "image" else {"text": prompt.strip()}
        result = self.generator.generate(**query, mode=mode, steps=int(steps), guidance=float(guidance),
                                         seed=int(seed), num_samples=int(count), duration=float(duration))
        folder = new_run_folder(self.work_dir)
        name = Path(image).stem if mode == "image" else prompt.strip()
        config = self.generator.model.mel_config
        clips = []
        for k, (wave, mel) in enumerate(zip(result.waveforms[0], result.mels[0])):
            title = f"{name} ({MODE_NAMES[mode]}, seed {int(seed) + k})"
            audio = save_audio(folder / f"clip-{k + 1}.wav", wave, result.sample_rate, clip="rescale")
            value_range = (float(mel.min()), float(mel.max()))
            image_file = save_figure(mel_figure([[(title, mel)]], value_range, config), folder / f"clip-{k + 1}.png")
            clips.append(ClipView(title, audio, image_file))
        return clips


def build_page(audition: AuditionGenerator):
    """The Gradio page (Blocks) on ``audition``."""
    gr = import_gradio()
    modes = audition.modes
    with gr.Blocks(title="CLIPSonic audition") as page:
        gr.Markdown("# CLIPSonic audition\nDescribe a sound, or show a picture of its source, and listen.")
        with gr.Row():
            with gr.Column(scale=2):
                prompt = gr.Textbox(label="prompt", placeholder="playing violin", elem_id="prompt")
                mode = gr.Radio([(MODE_NAMES[m], m) for m in modes], value=audition.generator.text_modes[0],
                                label="mode", elem_id="mode")
            image = gr.Image(label="image query (image mode)", type="filepath", elem_id="image", scale=1)
        with gr.Row():
            steps = gr.Slider(1, 200, value=25, step=1, label="sampler steps", elem_id="steps")
            guidance = gr.Number(value=3.0, label="guidance", elem_id="guidance")
            seed = gr.Number(value=0, precision=0, label="seed", elem_id="seed")
            count = gr.Slider(1, 8, value=2, step=1, label="clips", elem_id="count")
            duration = gr.Number(value=4.0, label="seconds per clip", elem_id="duration")
        run = gr.Button("Generate", variant="primary", elem_id="generate")
        status = gr.Textbox(label="messages", interactive=False, elem_id="status")
        clips = gr.State([])

        def generate(prompt, image, mode, steps, guidance, seed, count, duration):
            try:
                views = audition.generate(prompt, image, mode, steps, guidance, seed, count, duration)
            except ClipAudioError as error:
                return f"error: {error}", []
            return f"Generated {len(views)} clip(s).", views

        run.click(generate, [prompt, image, mode, steps, guidance, seed, count, duration], [status, clips])

        @gr.render(inputs=clips)
        def show(views):
            for view in views:
                with gr.Row(equal_height=True):
                    gr.Audio(str(view.audio), label=view.title, type="filepath", format="wav",
                             waveform_options=gr.WaveformOptions(show_recording_waveform=False), interactive=False,
                             scale=1)
                    gr.Image(str(view.image), show_label=False, interactive=False, scale=2)
    return page


def run_audition(args: argparse.Namespace) -> int:
    """Run ``clipsonic audition``: load the generator and serve the page until Ctrl-C."""
    import_gradio()  # before the model loads: a missing extra is said at once
    check_server_arguments(args)
    from clipsonic.generate import Generator  # here: diffusers is slow to import for --help

    generator = Generator.from_pretrained(args.checkpoint, query_encoder=args.query_encoder, prior=args.prior,
                                          vocoder=args.vocoder, device=resolve_device(args.device), gap=args.gap)
    generator.query_encoder()  # loaded now, so that a bad --query-encoder or --prior is said before serving
    if generator.has_prior:
        generator.prior()
    serve(lambda work_dir: build_page(AuditionGenerator(generator, work_dir)), args, "clipsonic-audition")
    return 0


def add_audition_command(subparsers: "argparse._SubParsersAction") -> None:
    """Register ``clipsonic audition``."""
    parser = subparsers.add_parser(
        "audition", help="a local page to try prompts by ear (needs clipaudio[app])",
        description="Serve a page on this machine where clips are generated from prompts or images and each "
                    "plays beside its mel spectrogram.")
    parser.add_argument("--checkpoint", required=True, help="a CLIPSonic checkpoint folder")
    parser.add_argument("--prior", default=None, metavar="DIR",
                        help="diffusion prior folder (default: CHECKPOINT/prior/ when present)")
    parser.add_argument("--gap", default=None, metavar="FILE",
                        help="a modality-gap file (recipes/measure_gap.py): offers text across the gap (default: none)")
    parser.add_argument("--query-encoder", default=None, metavar="SPEC",
                        help="query encoder (default: CHECKPOINT/query_encoder/ or the one the checkpoint names)")
    parser.add_argument("--vocoder", default=None, metavar="SPEC",
                        help="griffinlim or a HiFi-GAN folder (default: CHECKPOINT/vocoder/ when present, else "
                             "Griffin-Lim)")
    add_device_argument(parser)
    add_server_arguments(parser)
    parser.set_defaults(run=run_audition)

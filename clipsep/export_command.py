"""The ``clipsep export`` command: a separator as ONNX files (see :mod:`clipsep.export_onnx`)."""

from __future__ import annotations

import argparse

__all__ = ["add_export_command"]


def add_export_command(subparsers: "argparse._SubParsersAction") -> None:
    """Registrar of ``clipsep export --onnx DIR --checkpoint CKPT``."""
    parser = subparsers.add_parser(
        "export",
        help="write the mask network and text tower as ONNX",
        description="Export a separator's mask network (dynamic batch, length and number of queries, with its "
        "noise heads) and its CLIP text tower as ONNX files, with onnx.json describing how to call them.",
    )
    parser.add_argument("--onnx", required=True, metavar="DIR", help="folder to write")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="project checkpoint folder, or the official best_model.pt")
    parser.add_argument("--query-encoder", default=None, metavar="SPEC",
                        help="query encoder (default: the checkpoint's own query_encoder/)")
    parser.add_argument("--template", action="append", default=None, metavar="TEMPLATE",
                        help='text prompt template with {} recorded in onnx.json (default "a photo of {}"; repeat '
                        "to average several)")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from clipcore.files import check_output_folder
    from clipsep.export_onnx import export_onnx
    from clipsep.separate import Separator

    check_output_folder(args.onnx, "--onnx")  # before the model is loaded
    separator = Separator.load(args.checkpoint, query_encoder=args.query_encoder, templates=args.template)
    paths = export_onnx(separator, args.onnx)
    for path in paths.values():
        print(path)
    return 0

"""The ``clipsep`` command line."""

from __future__ import annotations

import sys

from clipcore import cli
from clipsep.audition import add_audition_command
from clipsep.convert import add_convert_command
from clipsep.export_command import add_export_command
from clipsep.separate_command import add_separate_command

DESCRIPTION = "CLIPSep: text-queried sound separation learned from unlabeled video."
COMMANDS: list[cli.Registrar] = [add_audition_command, add_convert_command, add_export_command, add_separate_command]


def main(argv: list[str] | None = None) -> int:
    return cli.run(cli.build_parser("clipsep", DESCRIPTION, COMMANDS), argv)


if __name__ == "__main__":
    sys.exit(main())

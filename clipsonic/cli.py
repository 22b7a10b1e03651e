"""The ``clipsonic`` command line."""

from __future__ import annotations

import sys

from clipcore import cli
from clipsonic.audition import add_audition_command
from clipsonic.generate_command import add_generate_command

DESCRIPTION = "CLIPSonic: text-to-audio generation learned from unlabeled video."
COMMANDS: list[cli.Registrar] = [add_audition_command, add_generate_command]


def main(argv: list[str] | None = None) -> int:
    return cli.run(cli.build_parser("clipsonic", DESCRIPTION, COMMANDS), argv)


if __name__ == "__main__":
    sys.exit(main())

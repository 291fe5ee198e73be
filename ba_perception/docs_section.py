"""Generated sections of Markdown files: replace the text between two marker lines, or check it is current."""

from __future__ import annotations

import argparse
from pathlib import Path


def replace_section(path: Path, begin: str, end: str, text: str, check: bool, regenerate: str) -> int:
    """Put ``text`` (which starts with ``begin`` and ends with ``end``) between the markers in ``path``.

    Args:
        path: the Markdown file.
        begin: the first marker line.
        end: the last marker line.
        text: the whole generated section, markers included.
        check: only compare; raise when the file differs.
        regenerate: the command that writes the section (named in the error).

    Returns:
        0 (the process exit code).

    Raises:
        CommandError: the markers are missing, or ``check`` and the section is stale.
    """
    from ba_perception.cli import CommandError

    doc = path.read_text()
    if begin not in doc or end not in doc:
        raise CommandError(f"{path} has no generated-section markers ({begin[:40]}...)")
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    new = head + text + tail
    if check:
        if new != doc:
            raise CommandError(f"{path} is stale: run `{regenerate}`")
        return 0
    path.write_text(new)
    return 0


def add_section_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--write FILE`` / ``--check FILE`` of a command that generates a section (``what`` names it)."""
    parser.add_argument("--write", metavar="FILE", help=f"replace the {what} section of this file")
    parser.add_argument("--check", metavar="FILE", help=f"exit 2 if this file's {what} section is stale")


def run_section_command(args: argparse.Namespace, command: str, begin: str, end: str, text: str) -> int:
    """Print ``text``, or write / check it in the file named by ``--write`` / ``--check``.

    Args:
        args: parsed arguments of :func:`add_section_arguments`.
        command: the ``ba-perception`` subcommand (named in the stale-file error).
        begin: the first marker line.
        end: the last marker line.
        text: the generated section.

    Returns:
        0 (the process exit code).
    """
    target = args.write or args.check
    if not target:
        print(text)
        return 0
    return replace_section(Path(target), begin, end, text, check=bool(args.check),
                           regenerate=f"ba-perception {command} --write {target}")

"""Generated sections of Markdown files: replace the text between two marker lines, or check it is current."""

from __future__ import annotations

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

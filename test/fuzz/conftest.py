"""Reports how many messages the fuzz tests fed to node callbacks (the issue's bar: >= 10,000 in CI)."""

from __future__ import annotations


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from fuzz.harness import FED

    if FED["messages"]:
        terminalreporter.write_line(f"fuzz: {FED['messages']} messages fed to node callbacks in-process")

"""xsae.progress: a live bar on a terminal, plain lines (no carriage returns) in a log."""

from __future__ import annotations

import io

from xsae import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_at_the_start_and_the_end():
    log = io.StringIO()
    bar = progress.progress(stream=log, total=1000, desc="train SAE", unit="step")
    for _ in range(1000):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 2  # updates within LOG_INTERVAL of each other are not drawn
    assert lines[0].startswith("train SAE:   0%") and lines[-1].startswith("train SAE: 100%")
    assert "1000/1000" in lines[-1]


def test_a_log_gets_a_line_per_interval(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    log = io.StringIO()
    bar = progress.progress(stream=log, total=3, desc="x", unit="step", miniters=1)
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert [line.split("|")[0].strip() for line in lines[:4]] == ["x:   0%", "x:  33%", "x:  67%", "x: 100%"]


def test_a_terminal_gets_the_live_bar():
    terminal = Terminal()
    bar = progress.progress(stream=terminal, total=2, desc="x", mininterval=0)
    bar.update(2)
    bar.close()
    assert "\r" in terminal.getvalue()


def test_a_hidden_bar_writes_nothing():
    log = io.StringIO()
    bar = progress.progress(stream=log, total=2, disable=True)
    bar.update(2)
    bar.close()
    assert log.getvalue() == ""

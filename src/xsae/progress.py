"""Progress bars that suit where they are shown: tqdm's live bar on a terminal; in a log (a
Snakemake job's stderr, a cluster job's output file) a plain line at the start, every
`LOG_INTERVAL` seconds and at the end, instead of carriage-return redraws that make one endless
line of the log."""

from __future__ import annotations

import io
import sys
from typing import Any, TextIO

from tqdm import tqdm

#: Seconds between two progress lines in a log.
LOG_INTERVAL = 30.0


class _Lines(io.TextIOBase):
    """Turns tqdm's redraws (`\\r` + padded bar) into one line each."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for part in text.split("\r"):
            line = part.strip()
            if line:
                self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def progress(*, stream: TextIO | None = None, **kwargs: Any) -> tqdm:
    """`tqdm(**kwargs)` on `stream` (default stderr): live on a terminal, log lines elsewhere."""
    stream = stream if stream is not None else sys.stderr
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(file=stream, dynamic_ncols=True, **kwargs)
    return tqdm(file=_Lines(stream), mininterval=LOG_INTERVAL, ncols=100, ascii=True, **kwargs)

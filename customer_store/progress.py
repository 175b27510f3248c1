"""A one-line progress display on a terminal; silent when stderr is a file or a pipe."""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Redraws ``12,345 records  4,100/s  <detail>`` at most a few times a second."""

    def __init__(self, stream: TextIO, *, noun: str, interval: float = 0.2) -> None:
        self.stream = stream
        self.noun = noun
        self.interval = interval
        self.enabled = stream.isatty()
        self._started = time.monotonic()
        self._drawn_at = 0.0
        self._width = 0

    def update(self, done: int, detail: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn_at < self.interval:
            return
        self._drawn_at = now
        rate = done / max(now - self._started, 1e-9)
        line = f"{done:,} {self.noun}  {rate:,.0f}/s  {detail}".rstrip()
        self.stream.write("\r" + line.ljust(self._width))
        self.stream.flush()
        self._width = len(line)

    def clear(self) -> None:
        """Erase the line, so that another message can be printed in its place."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def finish(self) -> None:
        self.clear()

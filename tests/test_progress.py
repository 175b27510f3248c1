"""The progress bar wrapper (customer_store.progress) on a real pseudo-terminal and on a
stream that is not one. The commands that draw it are tested in test_cli.py."""

from __future__ import annotations

import io
import os
import re
import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import pytest

from customer_store.progress import print_message, progress_bar

pytestmark = pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")


@contextmanager
def terminal(columns: int | None = 100) -> Iterator[tuple[TextIO, list[str]]]:
    """A pseudo-terminal of ``columns`` (unsized when None) as a text stream, and a list
    that gets what was written to it once the block ends."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    got: list[str] = []
    try:
        with open(slave, "w", encoding="utf-8", closefd=False) as stream:
            yield stream, got
        data = bytearray()
        while select.select([master], [], [], 0.2)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            data += chunk
        got.append(data.decode("utf-8"))
    finally:
        os.close(slave)
        os.close(master)


def frames(text: str) -> list[str]:
    """What was drawn, one redraw or line at a time."""
    return [frame for frame in re.split(r"[\r\n]+", text) if frame.strip()]


def test_a_bar_with_a_total_shows_the_percentage_the_rate_and_the_time_left() -> None:
    with terminal() as (stream, got):
        bar = progress_bar(total=200, unit="customers", stream=stream)
        bar.update(50)
        bar.set_postfix_str("50 applied")
        bar.update(150)
        bar.close()
    last = frames(got[0])[-1]
    assert re.fullmatch(
        r"100%\|█+\| 200/200 \[\d\d:\d\d<\d\d:\d\d, +[\d.?]+ customers/s, 50 applied\] *",
        last,
    ), got[0]
    assert any(frame.startswith(" 25%|") for frame in frames(got[0])), got[0]


def test_a_bar_of_bytes_writes_sizes_with_prefixes_and_without_a_total_no_percentage() -> None:
    with (
        terminal() as (stream, got),
        progress_bar(total=None, unit="B", unit_scale=True, stream=stream) as bar,
    ):
        bar.update(2_500_000)
    last = frames(got[0])[-1]
    assert re.fullmatch(r"2\.50MB \[\d\d:\d\d, +[\d.?]+[kMG]?B/s\] *", last), got[0]
    assert "%" not in got[0]


def test_a_terminal_that_tells_no_size_still_gets_the_bar() -> None:
    with (
        terminal(columns=None) as (stream, got),
        progress_bar(total=10, unit="events", stream=stream, desc="ingest") as bar,
    ):
        bar.update(10)
    assert any(frame.startswith("ingest: 100%|") for frame in frames(got[0])), got[0]
    assert all(len(frame) <= 80 for frame in frames(got[0])), got[0]


def test_a_message_goes_above_the_bar_which_is_drawn_again_below_it() -> None:
    with terminal() as (stream, got):
        bar = progress_bar(total=4, unit="customers", stream=stream)
        bar.update(1)
        print_message("rejected line 2: $.birthdate: not a date", stream=stream)
        bar.update(3)
        bar.close()
    lines = got[0].split("\r\n")
    # The bar was erased (carriage return, blanks, carriage return) and the message
    # printed whole from the first column; the bar comes back after it.
    message = next(line for line in lines if "rejected line 2" in line)
    assert re.search(r"\r *\rrejected line 2: \$\.birthdate: not a date$", message), got[0]
    assert frames(lines[lines.index(message) + 1])[0].startswith(" 25%|"), got[0]
    assert frames(got[0])[-1].startswith("100%|"), got[0]


def test_on_a_stream_that_is_no_terminal_only_the_messages_are_written() -> None:
    stream = io.StringIO()
    with progress_bar(total=3, unit="customers", stream=stream) as bar:
        bar.update(1)
        print_message("rejected line 2: bad", stream=stream)
        bar.set_postfix_str("1 applied")
        bar.update(2)
    assert bar.disable
    assert stream.getvalue() == "rejected line 2: bad\n"

"""Progress bars, drawn by tqdm on a terminal; nothing at all when the stream is a file or a
pipe, so that logs and captured output hold only the commands' own lines."""

from __future__ import annotations

import os
import sys
from typing import Never, TextIO

from tqdm import tqdm

__all__ = ["print_message", "progress_bar"]

#: Seconds between two redraws, at least: drawing costs little, but a terminal over a slow
#: link should not be flooded.
_REDRAW_INTERVAL = 0.2
#: Columns and lines to draw in on a terminal that tells no size (a pseudo-terminal that
#: nobody sized).
_FALLBACK_SIZE = (80, 24)


def progress_bar(
    *,
    total: int | None,
    unit: str,
    stream: TextIO | None = None,
    unit_scale: bool = False,
    desc: str | None = None,
) -> tqdm[Never]:
    """A bar counting ``unit`` (a word such as ``"customers"``, or a symbol such as
    ``"B"``) on ``stream``, standard error by default, drawn only when that stream is a
    terminal.

    It shows the count and the rate; when ``total`` is known, also the percentage done and
    the time left. ``unit_scale`` writes counts with SI prefixes (``12.3MB``), ``desc`` is
    a label before the bar. Move it on with ``bar.update(n)``, show running counts after it
    with ``bar.set_postfix_str(...)``, and end it with ``bar.close()`` (or use it in a
    ``with`` block), which leaves its last state on the screen. A line printed while it is
    shown goes through :func:`print_message`, never straight to the stream.
    """
    out = sys.stderr if stream is None else stream
    drawn = out.isatty()
    # tqdm follows the terminal's size as it changes; where it reads 0 it would draw
    # nothing, so such a terminal gets a fixed size.
    sized = drawn and _terminal_width(out) > 0
    columns, lines = (None, None) if sized else _FALLBACK_SIZE
    return _Bar(
        total=total,
        # tqdm writes the unit right after the number: a symbol belongs there (12.3MB/s), a
        # word after a space (410.25 customers/s).
        unit=f" {unit}" if len(unit) > 2 else unit,
        unit_scale=unit_scale,
        desc=desc,
        file=out,
        disable=not drawn,
        dynamic_ncols=sized,
        ncols=columns,
        nrows=lines,
        mininterval=_REDRAW_INTERVAL,
    )


class _Bar(tqdm):  # type: ignore[type-arg]
    # No monitor thread: the bars are moved on by hand, and a thread running would keep an
    # import from forking its validating processes (they would be spawned, slower).
    monitor_interval = 0


def print_message(text: str, *, stream: TextIO | None = None) -> None:
    """Print the line ``text`` on ``stream`` (standard error by default) above the progress
    bars drawn there, which are redrawn below it; just the line when none is drawn."""
    tqdm.write(text, file=sys.stderr if stream is None else stream)


def _terminal_width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0

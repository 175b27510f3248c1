"""Parse time and peak memory of ``read_records`` on each path through it.

    python -m bench.import_paths [--size-mb 100] [--elements-mb 5 10 20] [--reader FILE]

Run from the repository root. Inputs are generated into a temporary directory: JSON Lines
of about ``--size-mb`` MB of realistic customers (:mod:`bench.customers`); the same with a
malformed first line; the same customers as one pretty-printed array whose element 0 is
malformed; and, for each of ``--elements-mb``, an array of a few customers and one
pretty-printed element of that size (a customer with large metadata).

Each input is read in a fresh subprocess that only iterates the records (no database),
so the figures are the reader's: wall-clock seconds, records and errors yielded, and the
peak resident memory (``VmHWM``, reset before reading) above what the process held before
reading. The
records module is the project's, or ``--reader FILE``, a copy of another version (for
comparison: ``git show HEAD:repository/importing/records.py > /tmp/old_records.py``, then
``--reader /tmp/old_records.py``). Figures only: nothing asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from bench.customers import generate_customers

REPO_ROOT = Path(__file__).resolve().parent.parent
MB = 1_000_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--elements-mb", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    parser.add_argument(
        "--reader", type=Path, help="another version of repository/importing/records.py"
    )
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure is not None:
        return _measure(args.measure, args.reader)
    reader = args.reader.resolve() if args.reader else None
    with tempfile.TemporaryDirectory(prefix="import-paths-") as directory:
        inputs = _write_inputs(Path(directory), args.size_mb, args.elements_mb)
        print(f"reader: {reader or 'repository/importing/records.py'}")
        print(f"{'input':<44} {'MB':>7} {'seconds':>8} {'records':>9} {'errors':>7} "
              f"{'peak MB':>8}")
        for name, path in inputs:
            command = [sys.executable, "-m", "bench.import_paths", "--measure", str(path)]
            if reader is not None:
                command += ["--reader", str(reader)]
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                                  check=False)
            size = path.stat().st_size / MB
            if done.returncode != 0:
                print(f"{name:<44} {size:>7.1f} failed: {done.stderr.strip()[-300:]}")
                continue
            seconds, records, errors, peak = json.loads(done.stdout)
            print(f"{name:<44} {size:>7.1f} {seconds:>8.2f} {records:>9} {errors:>7} "
                  f"{peak / MB:>8.1f}")
    return 0


def _write_inputs(
    directory: Path, size_mb: float, elements_mb: Sequence[float]
) -> list[tuple[str, Path]]:
    lines = _customer_lines(size_mb * MB)
    valid = directory / "valid.jsonl"
    valid.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    bad_first = directory / "bad-first-line.jsonl"
    bad_first.write_text("{bad}\n" + "".join(line + "\n" for line in lines[1:]),
                         encoding="utf-8")
    bad_element = directory / "array-bad-element-0.json"
    with bad_element.open("w", encoding="utf-8") as out:
        out.write("[{bad}")
        for line in lines[1:]:
            out.write(",\n" + json.dumps(json.loads(line), indent=2, ensure_ascii=False))
        out.write("\n]\n")
    inputs = [
        ("JSON Lines, valid", valid),
        ("JSON Lines, first line malformed", bad_first),
        ("pretty array, element 0 malformed", bad_element),
    ]
    for megabytes in elements_mb:
        path = directory / f"array-element-{megabytes:g}mb.json"
        path.write_text(_array_with_large_element(lines[:5], megabytes * MB), encoding="utf-8")
        inputs.append((f"array with one {megabytes:g} MB pretty element", path))
    return inputs


def _customer_lines(size: float) -> list[str]:
    lines: list[str] = []
    total = 0
    for customer in generate_customers(10**9):
        line = json.dumps(customer, ensure_ascii=False, separators=(",", ":"))
        lines.append(line)
        total += len(line) + 1
        if total >= size:
            return lines
    return lines


def _array_with_large_element(lines: Sequence[str], size: float) -> str:
    rng = random.Random(11)
    large: dict[str, Any] = json.loads(lines[0])
    large["id"] = "cust_large_element"
    metadata: dict[str, Any] = {}
    written = 0
    while written < size:
        key = f"attribute_{len(metadata)}"
        metadata[key] = {"score": rng.random(), "tags": ["a", "b\\c", "ü"],
                         "note": f'said "{rng.getrandbits(32)}" [sic] {{x}}'}
        # Indented three levels deeper in the file than here: about 6 spaces a line more.
        entry = json.dumps({key: metadata[key]}, indent=2, ensure_ascii=False)
        written += len(entry.encode()) + 6 * entry.count("\n")
    large["metadata"] = metadata
    elements = [json.loads(lines[1]), large, *(json.loads(line) for line in lines[2:])]
    return json.dumps(elements, indent=2, ensure_ascii=False) + "\n"


def _measure(path: Path, reader: Path | None) -> int:
    read_records = _reader(reader)
    _reset_peak()
    baseline = _rss("VmRSS")
    started = time.perf_counter()
    records = errors = 0
    with path.open(encoding="utf-8-sig", errors="surrogateescape") as stream:
        for record in read_records(stream):
            records += 1
            errors += record.error is not None
    seconds = time.perf_counter() - started
    print(json.dumps([seconds, records, errors, max(0, _rss("VmHWM") - baseline)]))
    return 0


def _reader(path: Path | None) -> Callable[[TextIO], Iterator[Any]]:
    if path is None:
        from repository.importing.records import read_records

        return read_records
    spec = importlib.util.spec_from_file_location("other_records", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    function: Callable[[TextIO], Iterator[Any]] = module.read_records
    return function


def _reset_peak() -> None:
    """Start the peak over: a process started by another inherits that one's peak (Linux
    keeps it across exec), which would hide the reader's."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass  # not Linux: ru_maxrss then includes the parent's peak, an upper bound


def _rss(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in bytes; ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


if __name__ == "__main__":
    sys.exit(main())

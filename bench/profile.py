"""Where the time of ``import`` and of ``get`` goes: py-spy flame graphs and a per-stage table.

    pip install -e '.[profile]'          # py-spy, a sampling profiler
    python -m bench.profile [--customers 20000] [--gets 5000] [--out docs]

On a throwaway PostgreSQL database (dropped at the end) it generates ``--customers``
customers (bench/customers.py) and records, with py-spy, at 250 samples a second:

- ``customer-store import`` of them (every thread: the reader, the writer, and the
  validating worker process's; the flame graph shows the command's own process);
- a loop of ``CustomerReader.get`` by id on a read-only engine, as a request handler runs
  it, and the same loop with ``get_json``.

Each run leaves a flame graph, ``<out>/profile-<name>.svg``, and prints the share of the
samples in each stage, judged by the innermost frame that belongs to one: the input read
and split into values, JSON decoding, validation (pydantic and the storability checks),
mapping between the shape and the rows, COPY formatting, the driver and the server (psycopg,
and the server's answers waited for: idle samples count), SQLAlchemy, batches pickled
between processes, a thread waiting for another one's turn (or a process for another's
batch), and the rest. py-spy needs permission to read another
process's memory (root, or ``CAP_SYS_PTRACE``).
"""

from __future__ import annotations

import argparse
import html
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.customers import write_jsonl
from bench.store_bench import DEFAULT_ADMIN_URL, sample_ids, throwaway_database
from repository import CustomerReader, make_engine
from repository.db import upgrade_to_head

RATE = 250
# (stage, what a frame's text contains), the first match of the innermost matching frame.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("driver and server", ("psycopg/", "psycopg_c", "psycopg_binary")),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("COPY formatting", ("repository/store/pg_copy.py", "repository/store/bulk.py")),
    ("validation", ("pydantic", "models/validation.py", "models/storability.py",
                    "models/wire.py", "models/customer.py")),
    ("JSON", ("json/decoder.py", "json/encoder.py", "json/__init__.py",
              "models/json_decoding.py")),
    ("mapping", ("repository/store/mapping.py", "repository/store/reads.py",
                 "repository/store/children.py")),
    ("read", ("repository/importing/json_scan.py", "repository/importing/records.py",
              "codecs.py", "<frozen codecs>")),
    ("batches between processes", ("multiprocessing/reduction.py", "copyreg.py")),
    ("other thread's turn", ("threading.py", "queue.py", "concurrent/futures",
                             "multiprocessing/connection.py")),
]


def stage_of(stack: str) -> str:
    """The stage of one collapsed stack (outermost frame first, ``;`` between frames)."""
    for frame in reversed(stack.split(";")):
        for stage, marks in STAGES:
            if any(mark in frame for mark in marks):
                return stage
    return "other"


def stage_shares(raw: Path) -> dict[str, dict[str, float]]:
    """Shares of each thread's samples per stage, from py-spy's ``--format raw --threads``
    output, for the threads that did work (not those that only ever waited, such as the
    progress bar's monitor)."""
    counts: dict[str, Counter[str]] = {}
    names: dict[str, str] = {}
    processes: list[str] = []  # the command's own process first, then its workers
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, _, frames = stack.partition(";")
        worker = ""
        while thread.startswith("process "):  # with --subprocesses: parent, child, thread
            process = thread.split(":")[0]
            processes += [] if process in processes else [process]
            worker = "worker " if process != processes[0] else ""
            thread, _, frames = frames.partition(";")
        ident, _, name = thread.partition(": ")
        ident = worker + ident
        if name:
            names[ident] = worker + name
        counts.setdefault(ident, Counter())[stage_of(frames)] += int(count)
    shares = {}
    for ident, stages in counts.items():
        total = sum(stages.values())
        if stages["other thread's turn"] + stages["other"] > 0.95 * total:
            continue
        shares[names.get(ident, ident)] = {
            stage: stages[stage] / total for stage, _ in [*STAGES, ("other", ())]
        }
    return shares


def record(
    py_spy: str, command: list[str], out: Path, name: str
) -> dict[str, dict[str, float]]:
    """Run ``command`` under py-spy twice (a flame graph, then raw stacks for the table):
    the stage shares of each working thread."""
    shares: dict[str, dict[str, float]] = {}
    for fmt, path in (("flamegraph", out / f"profile-{name}.svg"),
                      ("raw", out / f"profile-{name}.txt")):
        # The table counts the validating workers' samples too; the flame graph is the
        # command's own process (a worker's frames would name its command line).
        workers = ["--subprocesses"] if fmt == "raw" else []
        subprocess.run(
            [py_spy, "record", "--rate", str(RATE), "--idle", "--nonblocking", "--threads",
             *workers, "--format", fmt, "--output", str(path), "--", *command],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if fmt == "raw":
            shares = stage_shares(path)
            path.unlink()
        else:
            retitle(path, f"customer-store: {name}")
    return shares


def retitle(svg: Path, title: str) -> None:
    """Put ``title`` where py-spy writes its command line (which holds the database URL and
    temporary paths of this run)."""
    text = svg.read_text(encoding="utf-8")
    text = re.sub(r'(<text id="title"[^>]*>)[^<]*(</text>)',
                  lambda m: m.group(1) + html.escape(title) + m.group(2), text, count=1)
    svg.write_text(text, encoding="utf-8")


def get_loop(url: str, ids_path: str, method: str, seconds: float) -> None:
    """Call ``method`` (``get`` or ``get_json``) on the ids in ``ids_path`` for ``seconds``."""
    ids = Path(ids_path).read_text(encoding="utf-8").split()
    call = getattr(CustomerReader(make_engine(url, read_only=True)), method)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        assert call(ids[i % len(ids)]) is not None
        i += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--gets", type=int, default=5_000, help="ids the get loops cycle over")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each get loop")
    parser.add_argument("--out", default="docs", help="folder for the flame graphs")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                               DEFAULT_ADMIN_URL))
    parser.add_argument("--get-loop", nargs=3, metavar=("URL", "IDS", "METHOD"),
                        help=argparse.SUPPRESS)  # the profiled child of a get run
    args = parser.parse_args(argv)
    if args.get_loop:
        url, ids, method = args.get_loop
        get_loop(url, ids, method, args.seconds)
        return 0
    # Installed beside this interpreter (a virtual environment's bin), or on PATH.
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which(
        "py-spy"
    )
    if py_spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[profile]'")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, dict[str, float]] = {}

    def add(run: str, threads: dict[str, dict[str, float]]) -> None:
        for thread, shares in threads.items():
            # A run of several working threads (the import's) names each: one column per thread.
            several = run == "import" or len(threads) > 1
            label = f"{run} ({thread.removesuffix('_0')})" if several else run
            tables[label] = shares

    with throwaway_database(args.admin_url) as url, tempfile.TemporaryDirectory() as tmp:
        upgrade_to_head(url)
        path = str(Path(tmp) / "customers.jsonl")
        write_jsonl(path, args.customers)
        cli = [sys.executable, "-m", "customer_store", "--database-url", url]
        add("import", record(py_spy, [*cli, "import", path], out, "import"))
        ids = Path(tmp) / "ids.txt"
        ids.write_text("\n".join(sample_ids(url, args.gets)), encoding="utf-8")
        for method in ("get", "get_json"):
            loop = [sys.executable, "-m", "bench.profile", "--seconds", str(args.seconds),
                    "--get-loop", url, str(ids), method]
            add(method, record(py_spy, loop, out, method))
    stages = [stage for stage, _ in STAGES] + ["other"]
    width = max(len(name) for name in tables) + 2
    first = max(len(stage) for stage in stages) + 2
    print(f"{'stage':<{first}}" + "".join(f"{name:>{width}}" for name in tables))
    for stage in stages:
        print(f"{stage:<{first}}"
              + "".join(f"{shares[stage]:>{width}.0%}" for shares in tables.values()))
    svgs = ", ".join(str(out / f"profile-{n}.svg") for n in ("import", "get", "get_json"))
    print(f"flame graphs: {svgs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Reading records: a malformed array element or first line costs that record only.

In-process tests pin what :func:`read_records` yields (also with the input served a few
characters at a time, so that every value straddles reads) and that it reads ahead by a
bounded amount, whatever the size of the input and wherever the error is. Then the same
inputs go through ``import_records`` and the real ``customer-store import`` on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import multiprocessing
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TextIO, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from models import Base
from repository import CustomerRepository, make_engine, make_session_factory
from repository.db.schema import upgrade_to_head
from repository.importing import Record, import_records
from repository.importing.records import decode_line, read_records
from tests.test_cli import BACKENDS, cli, describe, rejections, summary

STOP_RE = re.compile(
    r"reading stopped at byte (\d+) \(line \d+, column \d+\), element index (\d+): "
    r"the rest of the input was not imported"
)


def customer(number: int) -> dict[str, Any]:
    # Brackets, quotes and backslashes inside strings must not move where elements end.
    return {
        "id": f"cust_rec_{number:05d}",
        "source_id": f"src-{number}",
        "name": f'Ann "[{number}]" {{x}} \\ ü',
        "created_at": "2024-01-01T00:00:00.000Z",
        "object": "customer",
    }


def read(text: str, served: int | None = None) -> list[Record]:
    return list(read_records(Trickle(text, served) if served else io.StringIO(text)))


class Trickle(io.StringIO):
    """Text served at most ``size`` characters per read."""

    def __init__(self, text: str, size: int) -> None:
        super().__init__(text)
        self.size = size

    def read(self, n: int | None = -1) -> str:
        return super().read(n if n is None or n < 0 else min(n, self.size))


class Generated:
    """A long input made as it is read, counting the characters handed out."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self._buffer = ""
        self.served = 0

    def __iter__(self) -> Iterator[str]:
        while line := self.readline():
            yield line

    def as_text(self) -> TextIO:
        return cast(TextIO, self)

    def _fill(self, wanted: int, until: str = "") -> None:
        have, added = len(self._buffer), [self._buffer]
        while have < wanted and not (until and until in added[-1]):
            piece = next(self._pieces, None)
            if piece is None:
                break
            added.append(piece)
            have += len(piece)
        self._buffer = "".join(added)

    def read(self, size: int | None = -1) -> str:
        wanted = size if size is not None and size >= 0 else 1 << 62
        self._fill(wanted)
        out, self._buffer = self._buffer[:wanted], self._buffer[wanted:]
        self.served += len(out)
        return out

    def readline(self, size: int | None = -1) -> str:
        self._fill(1 << 62, until="\n")
        end = self._buffer.find("\n") + 1 or len(self._buffer)
        out, self._buffer = self._buffer[:end], self._buffer[end:]
        self.served += len(out)
        return out


def first(records: Iterator[Record], count: int) -> list[Record]:
    return [next(records) for _ in range(count)]


# -- what is read --------------------------------------------------------------------------


@pytest.mark.parametrize("indent", [None, 2], ids=["one-line", "pretty"])
@pytest.mark.parametrize("bad", [0, 5, 9])
def test_a_malformed_array_element_is_reported_and_every_other_element_read(
    bad: int, indent: int | None
) -> None:
    elements = [json.dumps(customer(i), indent=indent) for i in range(10)]
    elements[bad] = '{"id": "cust_bad", name: oops}'
    text = "[" + ",\n".join(elements) + "]\n"
    for served in (None, 7):
        records = read(text, served)
        assert [r.location for r in records] == [f"index {i}" for i in range(10)]
        assert [r.value for r in records if r.error is None] == [
            customer(i) for i in range(10) if i != bad
        ]
        error = records[bad].error or ""
        offset = text.index("name: oops")
        assert f"at byte {offset} " in error, error
        assert not any(r.stopped for r in records)


@pytest.mark.parametrize(
    "broken",
    ["{bad}", '{"a": 1 "b": 2}', "[1 2]", "tru", '{"a": [1, 2}', '{"a": "\\q"}', "NaN",
     "1e999", '"\x01"', '{"a": 1}}', "{}{}", '{"a": ]'],
)
def test_elements_broken_in_many_ways_cost_only_themselves(broken: str) -> None:
    text = f"[{json.dumps(customer(0))}, {broken}, {json.dumps(customer(2))}]"
    records = read(text)
    assert [r.value for r in records if r.error is None] == [customer(0), customer(2)]
    assert [r.location for r in records if r.error] == ["index 1"]


@pytest.mark.parametrize(
    ("tail", "why"),
    [('{"id": "cust_cut", "name": "no end', "a string is not closed"),
     ('{"id": "cust_cut", "tags": [["a"]', "1 bracket not closed")],
)
def test_where_elements_cannot_be_followed_reading_stops_and_says_where(
    tail: str, why: str
) -> None:
    head = "[" + "".join(json.dumps(customer(i)) + ", " for i in range(3))
    records = read(head + tail + ", 4, 5]")
    assert [r.value for r in records[:3]] == [customer(i) for i in range(3)]
    last = records[-1]
    assert len(records) == 4 and last.stopped and last.location == "index 3"
    match = STOP_RE.search(last.error or "")
    assert match, last.error
    assert (int(match[1]), int(match[2])) == (len(head), 3)
    assert why in (last.error or "")


def test_an_element_that_swallows_others_says_how_far_it_was_skipped() -> None:
    # A missing quote turns strings inside out until the brackets happen to balance.
    head = "[" + json.dumps(customer(0)) + ', {"id": "cust_cut", "name": "no end, '
    text = head + json.dumps(customer(2)) + "]"
    records = read(text)
    assert [r.location for r in records] == ["index 0", "index 1"]
    assert f"skipped up to byte {len(text) - 1} " in (records[1].error or "")


def test_a_truncated_array_stops_with_an_error_after_its_last_whole_element() -> None:
    records = read("[" + json.dumps(customer(0)) + ",\n" + json.dumps(customer(1)))
    assert [r.value for r in records[:2]] == [customer(0), customer(1)]
    assert records[2].stopped and "closing ]" in (records[2].error or "")


def test_more_input_after_a_multi_line_array_stops_reading() -> None:
    text = json.dumps([customer(0)], indent=2) + "\n" + json.dumps(customer(1)) + "\n"
    records = read(text)
    assert records[0].value == customer(0)
    assert records[1].stopped and "more input after" in (records[1].error or "")


@pytest.mark.parametrize(
    "bad_line",
    ["{bad}", '{"id": "cust_cut", "name": "Ann', '{"id": "cust_cut", "name": "Ann"',
     '{"id": "cust_cut",', "{", "not json at all"],
)
def test_json_lines_with_a_malformed_first_line_read_every_other_line(bad_line: str) -> None:
    lines = [bad_line] + [json.dumps(customer(i)) for i in range(1, 6)]
    for served in (None, 5):
        records = read("\n".join(lines) + "\n", served)
        assert [r.location for r in records] == [f"line {i}" for i in range(1, 7)]
        assert records[0].error and not records[0].stopped
        assert [r.value for r in records[1:]] == [customer(i) for i in range(1, 6)]


def test_a_pretty_printed_list_page_is_read_customer_by_customer() -> None:
    page = {"object": "list", "data_ref": "customers",
            "customers": [customer(i) for i in range(4)], "total": 4, "has_more": False}
    text = json.dumps(page, indent=2).replace('"id": "cust_rec_00002"', '"id": cust_rec_2')
    records = read(text)
    assert [r.location for r in records] == [f"customers[{i}]" for i in range(4)]
    assert [r.value for r in records if r.error is None] == [customer(i) for i in (0, 1, 3)]
    assert "byte" in (records[2].error or "")


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\[]{},:\n\tü'),
            lambda inner: st.lists(inner, max_size=3)
            | st.dictionaries(st.text(alphabet='k"]}\\', max_size=3), inner, max_size=3),
            max_leaves=8,
        ),
        max_size=8,
    ),
    indent=st.sampled_from([None, 1, 2]),
    served=st.integers(1, 40),
    bad=st.integers(0, 8),
)
def test_any_array_in_any_pieces_reads_as_json_loads_does(
    values: list[Any], indent: int | None, served: int, bad: int
) -> None:
    elements = [json.dumps(v, indent=indent, ensure_ascii=False) for v in values]
    expected = [Record(f"index {i}", v) for i, v in enumerate(values)]
    if bad < len(elements):
        elements[bad] = "{bad: [}"
    text = "[\n" + ",\n".join(elements) + "\n]\n"
    records = read(text, served)
    if bad < len(elements):
        assert records[bad].error and records[bad].location == f"index {bad}"
        del records[bad], expected[bad]
    assert records == expected


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    text=st.text(alphabet='[]{}",:\\ \n\r\t01aeu\ufeff', max_size=60).map(
        lambda t: t.replace("u", "\\u00")
    ),
    served=st.integers(1, 9),
)
def test_any_text_in_any_pieces_gives_the_same_records_and_a_stop_only_last(
    text: str, served: int
) -> None:
    whole = read(text)
    assert read(text, served) == whole
    assert all(r.location and (r.error is None or r.error.strip()) for r in whole)
    assert not any(r.stopped for r in whole[:-1])


# -- how far ahead it reads ----------------------------------------------------------------


def test_a_bad_first_line_does_not_make_the_reader_read_the_whole_file() -> None:
    lines = (json.dumps(customer(i)) + "\n" for i in range(1, 300_000))
    stream = Generated(iter(["{bad}\n", *lines]))
    records = first(read_records(stream.as_text()), 3)
    assert [r.location for r in records] == ["line 1", "line 2", "line 3"]
    assert stream.served < 3_000_000  # of about 40 MB


@pytest.mark.parametrize("pretty", [False, True])
def test_a_bad_element_does_not_make_the_reader_read_the_whole_array(pretty: bool) -> None:
    def pieces() -> Iterator[str]:
        yield '{\n  "object": "list",\n  "customers": [\n' if pretty else "["
        yield "{bad}"
        for i in range(1, 300_000):
            yield ",\n" + json.dumps(customer(i), indent=2 if pretty else None)
        yield "]}" if pretty else "]"

    stream = Generated(pieces())
    records = first(read_records(stream.as_text()), 3)
    assert records[0].error and [r.value for r in records[1:]] == [customer(1), customer(2)]
    assert stream.served < 300_000


def test_a_large_element_is_read_once_in_pieces() -> None:
    large = {**customer(1), "metadata": {f"k{i}": ["[{", i, '"}]'] for i in range(100_000)}}
    text = "[" + json.dumps(customer(0)) + ",\n" + json.dumps(large, indent=2) + "\n]"
    stream = Trickle(text, 1 << 16)
    records = list(read_records(stream))
    assert [r.value for r in records] == [customer(0), large]


# -- through the importer and the command line, on both databases ----------------------------


def stored_ids(session: Session, ids: list[str]) -> list[str]:
    repo = CustomerRepository(session)
    return [i for i in ids if repo.get(i) is not None]


def test_import_records_stores_every_good_element_and_marks_a_stop(
    engine: Engine, session: Session
) -> None:
    elements = [json.dumps(customer(i), indent=2) for i in range(8)]
    elements[0], elements[4] = "{bad}", '{"id": oops}'
    text = "[" + ",\n".join(elements) + ', {"id": "cust_rec_cut", "name": "x'
    report = import_records(make_session_factory(engine), read_records(io.StringIO(text)),
                            batch_size=3)
    ids = [customer(i)["id"] for i in range(8)]
    assert stored_ids(session, ids) == [ids[i] for i in (1, 2, 3, 5, 6, 7)]
    assert (report.applied, report.rejected) == (6, 3)
    assert [r.location for r in report.rejections] == ["index 0", "index 4", "index 8"]
    assert report.stopped is report.rejections[-1]
    assert STOP_RE.search(report.stopped.reason)


@pytest.fixture(params=BACKENDS)
def cli_url(request: pytest.FixtureRequest, make_database: Any) -> str:
    url: str = make_database(request.param)
    upgrade_to_head(url)
    return url


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_cli_imports_every_element_around_malformed_ones(cli_url: str, tmp_path: Path) -> None:
    elements = [json.dumps(customer(i), indent=2) for i in range(12)]
    elements[0], elements[6] = "{bad}", '{"id": "cust_rec_00006", name}'
    path = write(tmp_path / "array.json", "[" + ",\n".join(elements) + "]\n")
    run = cli("import", "--batch-size", "4", path, url=cli_url, cwd=tmp_path)
    assert run.returncode == 1, describe(run)
    assert set(rejections(run)) == {"index 0", "index 6"}, describe(run)
    assert all("byte" in reason for reason in rejections(run).values())
    assert summary(run) == (12, 10, 0, 2)
    assert "incomplete" not in run.stderr
    exported = cli("export", url=cli_url, cwd=tmp_path)
    ids = [json.loads(line)["id"] for line in exported.stdout.splitlines()]
    assert ids == [customer(i)["id"] for i in range(12) if i not in (0, 6)]


def test_cli_says_where_reading_stopped_and_fails(cli_url: str, tmp_path: Path) -> None:
    head = "[" + "".join(json.dumps(customer(i)) + ", " for i in range(3))
    path = write(tmp_path / "cut.json", head + '{"id": "cust_cut", "name": "x}, {"id": "y"}]')
    run = cli("import", path, url=cli_url, cwd=tmp_path)
    assert run.returncode == 1, describe(run)
    assert summary(run) == (4, 3, 0, 1)
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("customer-store: import incomplete: index 3: "), describe(run)
    match = STOP_RE.search(last)
    assert match and (int(match[1]), int(match[2])) == (len(head), 3), describe(run)


def test_cli_imports_json_lines_whose_first_line_is_malformed(
    cli_url: str, tmp_path: Path
) -> None:
    lines = ['{"id": "cust_rec_00000", "name": "cut'] + [
        json.dumps(customer(i)) for i in range(1, 6)
    ]
    path = write(tmp_path / "lines.jsonl", "\n".join(lines) + "\n")
    run = cli("import", path, url=cli_url, cwd=tmp_path)
    assert run.returncode == 1, describe(run)
    assert set(rejections(run)) == {"line 1"}, describe(run)
    assert summary(run) == (6, 5, 0, 1)


# -- validated in worker processes ------------------------------------------------------------


def mixed_lines() -> str:
    """JSON Lines with a little of everything a line can hold or lack."""
    older = {**customer(1), "name": "Older", "created_at": "2023-01-01T00:00:00.000Z"}
    page = {"object": "list", "customers": [customer(5), {"id": 7}, customer(6)]}
    lines = [
        json.dumps(customer(1)),
        json.dumps(older),  # stale: an older version of the line above
        "{not json",
        json.dumps({**customer(2), "birthdate": "1990-13-01"}),  # refused by validation
        json.dumps([customer(3), customer(4)]),  # an array on one line
        json.dumps(page),  # a list page on one line, one customer in it invalid
        '{"id": "cust_rec_nan", "metadata": {"x": NaN}}',
        "",
        json.dumps({**customer(8), "name": "Ann\u0000Lee"}),  # nothing a column can hold
        json.dumps(customer(9)),
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_import_what_this_process_would_with_the_same_rejections(
    engine: Engine, session: Session, workers: int
) -> None:
    text = mixed_lines()
    ids = [customer(i)["id"] for i in range(10)] + ["cust_rec_nan"]
    here = import_records(make_session_factory(engine), read_records(io.StringIO(text)),
                          batch_size=3)
    stored_here = {i: CustomerRepository(session).get_json(i) for i in ids}
    session.commit()
    for table in reversed(Base.metadata.sorted_tables):
        session.execute(table.delete())
    session.commit()

    there = import_records(
        make_session_factory(engine),
        read_records(io.StringIO(text), decode_lines=False),
        batch_size=3,
        workers=workers,
    )

    assert (there.applied, there.stale, there.rejected) == (here.applied, here.stale,
                                                            here.rejected) == (6, 1, 5)
    assert there.rejections == here.rejections
    assert {i: CustomerRepository(session).get_json(i) for i in ids} == stored_here
    assert [r.location for r in there.rejections] == [
        "line 3", "line 4", "line 6 customers[1]", "line 7", "line 9",
    ]


class _Interrupted(Exception):
    pass


def _collector_states_around_imports(url: str) -> dict[str, Any]:
    """Run in a process of its own: the collector's state (freeze count, whether it is
    enabled) seen after each batch and after the import, for imports with two workers:
    as a library caller makes one, as the command line does (``tune_gc``), one of those
    that fails halfway, and one in a process that froze its own start-up heap first."""
    engine = make_engine(url)
    states: dict[str, Any] = {}

    def run(name: str, *, fail: bool = False, **options: Any) -> None:
        during: list[tuple[int, bool]] = []

        def on_progress(report: Any) -> None:
            during.append((gc.get_freeze_count(), gc.isenabled()))
            if fail:
                raise _Interrupted

        with contextlib.suppress(_Interrupted):
            import_records(
                make_session_factory(engine),
                read_records(io.StringIO(mixed_lines()), decode_lines=False),
                batch_size=3, workers=2, on_progress=on_progress, **options,
            )
        states[name] = (during, (gc.get_freeze_count(), gc.isenabled()))

    try:
        run("library")
        run("tuned", tune_gc=True)
        run("tuned, failing", fail=True, tune_gc=True)
        gc.freeze()
        frozen = gc.get_freeze_count()
        run("tuned, host froze", tune_gc=True)
        states["host froze"] = frozen
        gc.unfreeze()
    finally:
        engine.dispose()
    return states


def test_importing_touches_the_garbage_collector_only_when_asked_and_restores_it(
    session: Session, database_url: str,
) -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here: the workers are spawned")
    # A fresh process, with no thread of this test run's (a fork could inherit a lock one
    # holds, so with threads running the import spawns its workers instead).
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        states = pool.submit(_collector_states_around_imports, database_url).result()

    # A library caller's process keeps its collector as it was, even with forked workers.
    during, after = states["library"]
    assert during and set(during) == {(0, True)}
    assert after == (0, True)
    # The command line's: the collector runs sparsely (off in between), and the objects
    # the forked workers share stay out of its sight while they run; all back afterwards.
    during, after = states["tuned"]
    assert during and all(count > 0 and not enabled for count, enabled in during)
    assert after == (0, True)
    # Also when the import fails.
    during, after = states["tuned, failing"]
    assert len(during) == 1 and during[0][0] > 0 and not during[0][1]
    assert after == (0, True)
    # A process that froze objects itself keeps them frozen (a few may be freed meanwhile):
    # nothing more is frozen for it, and nothing is unfrozen.
    during, after = states["tuned, host froze"]
    frozen = states["host froze"]
    assert during and all(0 < count <= frozen for count, _ in during), (during, frozen)
    assert 0 < after[0] <= frozen and after[1]
    assert CustomerRepository(session).count() == 6


def test_undecoded_lines_decode_to_the_records_read_records_gives() -> None:
    text = mixed_lines()
    undecoded = list(read_records(io.StringIO(text), decode_lines=False))
    assert all(r.undecoded and r.text is not None for r in undecoded)
    assert [one for r in undecoded for one in decode_line(r)] == read(text)


def test_cli_import_with_workers_matches_the_import_without(cli_url: str, tmp_path: Path) -> None:
    path = write(tmp_path / "mixed.jsonl", mixed_lines())
    runs = [cli("import", "--workers", n, path, url=cli_url, cwd=tmp_path) for n in ("1", "0")]
    for run in runs:
        assert run.returncode == 1, describe(run)
    assert rejections(runs[0]) == rejections(runs[1])
    # The same payloads again replace what the first run stored (as new as it): applied.
    assert summary(runs[0])[1:] == summary(runs[1])[1:] == (6, 1, 5)

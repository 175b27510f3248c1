"""End-to-end tests of the ``customer-store`` command line.

Every test runs the CLI as a real subprocess (``python -m customer_store``) in a temporary
working directory, against real SQLite and PostgreSQL databases that the tests migrate
with ``customer-store migrate`` themselves. Expected results are computed here from the
inputs (newest version of each id wins), never by calling the product's code.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from customer_store.cli import main as cli_main

BACKENDS = ["sqlite", "postgresql"]

#: The two example payloads the product must reject, by file-name prefix, with the JSON
#: path the rejection has to name.
INVALID_EXAMPLES = {"07-": "$.referrals.campaigns[0]", "59-": "$.birthdate"}

SUMMARY_RE = re.compile(
    r"^imported (\d+) records in [0-9.]+s: (\d+) applied, (\d+) unchanged, (\d+) stale, "
    r"(\d+) forgotten, (\d+) rejected$",
    re.MULTILINE,
)
REJECTION_RE = re.compile(r"^rejected (.+?): (.+)$", re.MULTILINE)
MIGRATE_HINT = "customer-store migrate"

#: Customers in the large import: 51 batches of 100, the last one partial.
LARGE_IMPORT_SIZE = 5_050
LARGE_IMPORT_BATCH = 100


# -- running the CLI ---------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What one ``customer-store`` process did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    stdout_bytes: bytes


def cli_env(url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if url is not None:
        env["DATABASE_URL"] = url
    return env


def cli(
    *args: str | os.PathLike[str],
    url: str | None,
    cwd: Path,
    stdin: bytes | None = None,
) -> Run:
    """Run ``customer-store ARGS`` with ``DATABASE_URL=url`` (unset when ``None``)."""
    argv = tuple(str(a) for a in args)
    completed = subprocess.run(
        [sys.executable, "-m", "customer_store", *argv],
        cwd=cwd,
        env=cli_env(url),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=180,
        check=False,
    )
    run = Run(
        argv,
        completed.returncode,
        completed.stdout.decode("utf-8", errors="replace"),
        completed.stderr.decode("utf-8", errors="replace"),
        completed.stdout,
    )
    # Whatever happens, the CLI reports in one line: never a Python traceback.
    assert "Traceback" not in run.stderr, describe(run)
    assert "Traceback" not in run.stdout, describe(run)
    return run


def cli_parallel(calls: Sequence[tuple[str, ...]], *, url: str | None, cwd: Path) -> list[Run]:
    """Run independent CLI calls side by side (each costs a process start)."""
    with ThreadPoolExecutor(max_workers=min(4, len(calls))) as pool:
        return list(pool.map(lambda args: cli(*args, url=url, cwd=cwd), calls))


def describe(run: Run) -> str:
    return (
        f"customer-store {' '.join(run.args)} -> exit {run.returncode}\n"
        f"--- stdout ---\n{run.stdout[:2000]}\n--- stderr ---\n{run.stderr[:4000]}"
    )


def migrate(url: str | None, cwd: Path) -> Run:
    run = cli("migrate", url=url, cwd=cwd)
    assert run.returncode == 0, describe(run)
    return run


def export(url: str, cwd: Path) -> list[dict[str, Any]]:
    run = cli("export", url=url, cwd=cwd)
    assert run.returncode == 0, describe(run)
    return parse_jsonl(run.stdout)


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def summary(run: Run) -> tuple[int, int, int, int]:
    """(total, written, stale, rejected) from the import's summary line: written counts
    the records applied and those of a version already stored (unchanged), stale those of
    older versions and of erased customers (forgotten)."""
    matches = SUMMARY_RE.findall(run.stderr)
    assert len(matches) == 1, describe(run)
    total, applied, unchanged, stale, forgotten, rejected = (int(n) for n in matches[0])
    return total, applied + unchanged, stale + forgotten, rejected


def rejections(run: Run) -> dict[str, str]:
    """Rejection reasons on stderr, by location (``line 7``)."""
    return dict(REJECTION_RE.findall(run.stderr))


# -- the expected state, computed from the inputs ----------------------------------------


def version_of(customer: Mapping[str, Any]) -> datetime | None:
    stamp = customer.get("updated_at") or customer.get("created_at")
    return None if stamp is None else datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def apply_newest_wins(
    store: dict[str, dict[str, Any]], records: Iterable[Mapping[str, Any]]
) -> tuple[int, int]:
    """Apply ``records`` one by one to ``store`` by the newest-wins rule; (applied, stale).

    A record replaces the stored version when it is at least as new (ties: the later one
    wins); a record with no time stamp counts as older than any that has one.
    """
    applied = stale = 0
    for record in records:
        stored = store.get(record["id"])
        incoming = version_of(record)
        stored_version = None if stored is None else version_of(stored)
        if (
            stored is None
            or stored_version is None
            or (incoming is not None and incoming >= stored_version)
        ):
            store[record["id"]] = dict(record)
            applied += 1
        else:
            stale += 1
    return applied, stale


def assert_plausible_counts(
    run: Run, store: dict[str, dict[str, Any]], valid: Sequence[Mapping[str, Any]], total: int
) -> None:
    """The summary adds up, and ``applied`` lies between the two ways of counting it.

    Applied one by one, every version at least as new as the stored one counts as
    applied; an importer that merges a batch first may count a version superseded
    within the batch as stale instead. Either way each id whose newest version is in the
    input (new ids, and ids re-sent at the stored version) is applied at least once, and
    no version older than the stored one is applied.
    """
    seen, applied, stale, rejected = summary(run)
    assert seen == total == applied + stale + rejected, describe(run)
    assert rejected == total - len(valid), describe(run)
    before = {key: dict(value) for key, value in store.items()}
    most_applied, _ = apply_newest_wins(store, valid)
    rewritten = {r["id"] for r in valid if r["id"] not in before or store[r["id"]] == r}
    assert len(rewritten) <= applied <= most_applied, describe(run)


def newest_by_id(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    store: dict[str, dict[str, Any]] = {}
    apply_newest_wins(store, records)
    return store


def in_id_order(store: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [store[key] for key in sorted(store)]


def to_jsonl(values: Iterable[Any], newline: str = "\n") -> bytes:
    return "".join(json.dumps(v, ensure_ascii=False) + newline for v in values).encode("utf-8")


def is_invalid_example(name: str) -> bool:
    return any(name.startswith(prefix) for prefix in INVALID_EXAMPLES)


def make_customer(
    customer_id: str, *, source_id: str | None = None, updated_at: str | None = None, **extra: Any
) -> dict[str, Any]:
    customer: dict[str, Any] = {
        "id": customer_id,
        "source_id": source_id if source_id is not None else f"src-{customer_id}",
        "name": f"Customer {customer_id}",
        "created_at": "2024-01-01T00:00:00.000Z",
        "object": "customer",
    }
    if updated_at is not None:
        customer["updated_at"] = updated_at
    customer.update(extra)
    return customer


def generated_customers(count: int, seed: int = 20240601) -> list[dict[str, Any]]:
    """``count`` varied customers with loyalty campaigns and referral entries."""
    rng = random.Random(seed)
    base = datetime(2023, 1, 1, tzinfo=UTC)

    def stamp(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    customers = []
    for i in range(count):
        created = base + timedelta(seconds=rng.randrange(10**7), milliseconds=rng.randrange(1000))
        customer: dict[str, Any] = {
            "id": f"cust_gen{i:05d}{rng.choice('abcXYZ')}",
            "source_id": f"gen-{i}@example.com",
            "name": rng.choice(["Zoë Ångström", "Łukasz Żółć", "山田 太郎", "Bob"]) + f" {i}",
            "email": f"gen-{i % 97}@example.com",
            "address": rng.choice([None, {}, {"city": "Kraków", "country": "PL", "line_2": None}]),
            "metadata": {"n": i, "big": 2**70 + i, "tags": ["a", {"b": None}], "ok": True},
            "summary": {
                "redemptions": {"total_redeemed": rng.randrange(100), "total_failed": 0},
                "orders": {"total_amount": rng.randrange(2**40), "total_count": i % 7},
            },
            "loyalty": {
                "points": rng.randrange(-50, 5000),
                "referred_customers": i % 3,
                "campaigns": {
                    f"Campaign {k} ✓": {
                        "points": rng.randrange(1000),
                        "loyalty_tier": f"ltr_{k}",
                        "referred_customers": k,
                    }
                    for k in range(rng.randrange(4))
                },
            },
            "referrals": {
                "total": i % 5,
                "campaigns": [
                    {
                        "campaign_id": f"camp_{rng.randrange(10)}",
                        "referrer_id": f"cust_gen{rng.randrange(count):05d}",
                        "related_object_id": f"r_{i}_{k}",
                        "related_object_type": "redemption",
                        "date": stamp(created + timedelta(minutes=k)),
                    }
                    for k in range(rng.randrange(4))
                ],
            },
            "created_at": stamp(created),
            "object": "customer",
        }
        if i % 2:
            customer["updated_at"] = stamp(created + timedelta(days=3))
        customers.append(customer)
    return customers


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture
def fresh_url(make_database: Any, db_backend: str) -> str:
    """An empty, unmigrated database of the backend."""
    url: str = make_database(db_backend)
    return url


@pytest.fixture
def migrated_url(fresh_url: str, tmp_path: Path) -> str:
    """An empty database that ``customer-store migrate`` has brought to the newest schema."""
    migrate(fresh_url, tmp_path)
    return fresh_url


@pytest.fixture(scope="module")
def examples(example_customers: list[tuple[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    assert len(example_customers) == 81
    assert all(isinstance(raw, dict) for _, raw in example_customers)
    return [(name, raw) for name, raw in example_customers]


@pytest.fixture(scope="module")
def valid_examples(examples: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    valid = [raw for name, raw in examples if not is_invalid_example(name)]
    assert len(valid) == len(examples) - len(INVALID_EXAMPLES)
    return valid


@dataclass(frozen=True)
class ImportedExamples:
    url: str
    cwd: Path
    path: Path
    first_import: Run
    first_export: Run


@pytest.fixture(scope="module")
def imported_examples(
    make_database: Any,
    db_backend: str,
    examples: list[tuple[str, dict[str, Any]]],
    tmp_path_factory: pytest.TempPathFactory,
) -> ImportedExamples:
    """A migrated database of the backend into which all 81 examples were imported once."""
    cwd = tmp_path_factory.mktemp(f"examples-{db_backend}")
    path = cwd / "examples.jsonl"
    path.write_bytes(to_jsonl(raw for _, raw in examples))
    url: str = make_database(db_backend)
    migrate(url, cwd)
    first_import = cli("import", path, url=url, cwd=cwd)
    first_export = cli("export", url=url, cwd=cwd)
    assert first_export.returncode == 0, describe(first_export)
    return ImportedExamples(url, cwd, path, first_import, first_export)


# -- migrate -----------------------------------------------------------------------------


def test_commands_on_an_unmigrated_database_fail_and_say_to_run_migrate(
    fresh_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "one.jsonl"
    data.write_bytes(to_jsonl([make_customer("cust_unmigrated")]))
    calls = [("get", "cust_unmigrated"), ("import", str(data)), ("export",)]
    for run in cli_parallel(calls, url=fresh_url, cwd=tmp_path):
        assert run.returncode == 1, describe(run)
        assert MIGRATE_HINT in run.stderr, describe(run)
        assert run.stdout == "", describe(run)


def test_migrate_succeeds_and_running_it_again_changes_nothing(
    fresh_url: str, tmp_path: Path
) -> None:
    first = cli("migrate", url=fresh_url, cwd=tmp_path)
    assert first.returncode == 0, describe(first)
    second = cli("migrate", url=fresh_url, cwd=tmp_path)
    assert second.returncode == 0, describe(second)
    assert "Traceback" not in first.stderr + second.stderr


# -- importing and exporting the Voucherify examples -------------------------------------


def test_import_of_the_examples_rejects_exactly_the_two_invalid_records(
    imported_examples: ImportedExamples, examples: list[tuple[str, dict[str, Any]]]
) -> None:
    run = imported_examples.first_import
    assert run.returncode == 1, describe(run)
    found = rejections(run)
    expected_lines = {
        f"line {number}": INVALID_EXAMPLES[prefix]
        for number, (name, _) in enumerate(examples, start=1)
        for prefix in INVALID_EXAMPLES
        if name.startswith(prefix)
    }
    assert set(found) == set(expected_lines), describe(run)
    for location, path in expected_lines.items():
        assert found[location].startswith(f"{path}: "), describe(run)

    valid = [raw for name, raw in examples if not is_invalid_example(name)]
    assert_plausible_counts(run, {}, valid, len(examples))
    # stderr is a pipe here: no progress line, so no carriage return.
    assert "\r" not in run.stderr


def test_export_gives_the_newest_version_of_every_valid_example_ordered_by_id(
    imported_examples: ImportedExamples, valid_examples: list[dict[str, Any]]
) -> None:
    exported = parse_jsonl(imported_examples.first_export.stdout)
    ids = [customer["id"] for customer in exported]
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))
    expected = newest_by_id(valid_examples)
    for customer in exported:
        assert any(customer == raw for raw in valid_examples if raw["id"] == customer["id"])
    assert exported == in_id_order(expected)
    assert "\r" not in imported_examples.first_export.stderr


def test_export_to_a_file_writes_what_export_to_stdout_prints(
    imported_examples: ImportedExamples,
) -> None:
    cwd, printed = imported_examples.cwd, imported_examples.first_export.stdout_bytes
    to_file, to_dash = cli_parallel(
        [("export", "exported.jsonl"), ("export", "-")], url=imported_examples.url, cwd=cwd
    )
    assert to_file.returncode == 0, describe(to_file)
    assert to_file.stdout == ""
    assert (cwd / "exported.jsonl").read_bytes() == printed
    assert to_dash.returncode == 0, describe(to_dash)
    assert to_dash.stdout_bytes == printed


def test_get_prints_the_stored_customer_as_the_json_that_was_imported(
    imported_examples: ImportedExamples, valid_examples: list[dict[str, Any]]
) -> None:
    expected = newest_by_id(valid_examples)
    # The customer with the most versions in the input: get must give the newest one.
    versions = {key: sum(1 for raw in valid_examples if raw["id"] == key) for key in expected}
    customer_id = max(sorted(expected), key=lambda key: versions[key])
    assert versions[customer_id] > 1
    run = cli("get", customer_id, url=imported_examples.url, cwd=imported_examples.cwd)
    assert run.returncode == 0, describe(run)
    assert json.loads(run.stdout) == expected[customer_id]


def test_get_of_an_unknown_id_fails_with_a_message(imported_examples: ImportedExamples) -> None:
    run = cli("get", "cust_does_not_exist", url=imported_examples.url, cwd=imported_examples.cwd)
    assert run.returncode == 1, describe(run)
    assert run.stdout == ""
    assert "cust_does_not_exist" in run.stderr


def test_import_of_a_missing_file_is_a_usage_error(
    imported_examples: ImportedExamples, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-dir" / "missing.jsonl"
    run = cli("import", missing, url=imported_examples.url, cwd=imported_examples.cwd)
    assert run.returncode == 2, describe(run)
    assert "missing.jsonl" in run.stderr


def test_database_url_option_overrides_the_environment(
    imported_examples: ImportedExamples, valid_examples: list[dict[str, Any]], tmp_path: Path
) -> None:
    env_database = tmp_path / "from-environment.db"
    customer_id = valid_examples[0]["id"]
    run = cli(
        "--database-url",
        imported_examples.url,
        "get",
        customer_id,
        url=f"sqlite:///{env_database}",
        cwd=tmp_path,
    )
    assert run.returncode == 0, describe(run)
    assert json.loads(run.stdout) == newest_by_id(valid_examples)[customer_id]
    assert not env_database.exists()


def test_importing_the_examples_again_changes_nothing_and_rejects_the_same_two(
    imported_examples: ImportedExamples, examples: list[tuple[str, dict[str, Any]]]
) -> None:
    url, cwd = imported_examples.url, imported_examples.cwd
    run = cli("import", imported_examples.path, url=url, cwd=cwd)
    assert run.returncode == 1, describe(run)
    assert rejections(run) == rejections(imported_examples.first_import)
    valid = [raw for name, raw in examples if not is_invalid_example(name)]
    # Versions as new as the stored one may re-apply; older ones are stale.
    assert_plausible_counts(run, newest_by_id(valid), valid, len(examples))

    again = cli("export", url=url, cwd=cwd)
    assert again.returncode == 0, describe(again)
    assert again.stdout_bytes == imported_examples.first_export.stdout_bytes


# -- input forms -------------------------------------------------------------------------


def with_id_suffix(records: Iterable[Mapping[str, Any]], suffix: str) -> list[dict[str, Any]]:
    return [{**record, "id": f"{record['id']}{suffix}"} for record in records]


def list_page(customers: Sequence[Any]) -> dict[str, Any]:
    return {"object": "list", "customers": list(customers), "has_more": False}


def input_forms(records: list[dict[str, Any]]) -> dict[str, tuple[bytes, str | None]]:
    """Each input form of ``records``, under its own id suffix: (bytes, path argument).

    The path argument is ``None`` for a file, ``"-"`` or ``""`` (no argument) for stdin.
    Reading stdin is the same whatever the form, so two forms double as the stdin cases.
    """

    def form(name: str) -> list[dict[str, Any]]:
        return with_id_suffix(records, f"~{name}")

    paged = form("pages")
    pages = [list_page(paged[i : i + 7]) for i in range(0, len(paged), 7)]
    crlf_lines = [json.dumps(r, ensure_ascii=False) for r in form("bom-crlf-stdin-dash")]
    for position in range(len(crlf_lines) - 1, 0, -10):
        crlf_lines.insert(position, "" if position % 20 else "   ")
    bom_text = "\ufeff\r\n" + "".join(line + "\r\n" for line in crlf_lines) + "\r\n"
    page = list_page(form("page-stdin-default"))
    return {
        "jsonl": (to_jsonl(form("jsonl")), None),
        "array": (json.dumps(form("array"), indent=2, ensure_ascii=False).encode(), None),
        "page-stdin-default": (json.dumps(page, indent=2).encode(), ""),
        "pages": (to_jsonl(pages), None),
        "bom-crlf-stdin-dash": (bom_text.encode("utf-8"), "-"),
    }


@pytest.mark.slow
def test_every_input_form_stores_the_same_customers(
    migrated_url: str, tmp_path: Path, valid_examples: list[dict[str, Any]]
) -> None:
    # Each form carries the same records under its own id suffix, so that all forms can
    # go into one database and be told apart in a single export.
    forms = input_forms(valid_examples)
    for name, (data, stdin_argument) in forms.items():
        if stdin_argument is None:
            path = tmp_path / f"{name}.input"
            path.write_bytes(data)
            run = cli("import", path.name, url=migrated_url, cwd=tmp_path)
        else:
            arguments = [stdin_argument] if stdin_argument else []
            run = cli("import", *arguments, url=migrated_url, cwd=tmp_path, stdin=data)
        assert run.returncode == 0, f"form {name}: {describe(run)}"
        assert rejections(run) == {}, f"form {name}: {describe(run)}"
        total, _, _, rejected = summary(run)
        assert (total, rejected) == (len(valid_examples), 0), f"form {name}"

    expected = in_id_order(newest_by_id(valid_examples))
    by_form: dict[str, list[dict[str, Any]]] = {name: [] for name in forms}
    for customer in export(migrated_url, tmp_path):
        base, _, name = customer["id"].rpartition("~")
        by_form[name].append({**customer, "id": base})
    for name, stored in by_form.items():
        assert sorted(stored, key=lambda c: c["id"]) == expected, f"form {name}"


# -- bad input ---------------------------------------------------------------------------


def test_bad_lines_are_reported_and_the_good_lines_around_them_are_stored(
    migrated_url: str, tmp_path: Path
) -> None:
    good = [
        make_customer("cust_good_1"),
        make_customer("cust_good_2", metadata={"ü": [1, 2]}),
        make_customer("cust_good_3", updated_at="2024-02-02T00:00:00.000Z"),
        make_customer("cust_good_4"),
    ]
    wrong_type = make_customer("cust_wrong_type", loyalty={"points": "12"})
    lines = [
        json.dumps(good[0]),
        '{"id": "cust_truncated", "name": "tr',
        json.dumps(good[1]),
        "[1,2]",
        '"x"',
        "42",
        json.dumps(wrong_type),
        json.dumps(good[2]),
        json.dumps(good[3]),
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = cli("import", path, url=migrated_url, cwd=tmp_path)
    assert run.returncode == 1, describe(run)
    found = rejections(run)
    # A line holding an array stands for its elements, each stored or rejected on its own.
    expected = {"line 2", "line 4 [0]", "line 4 [1]", "line 5", "line 6", "line 7"}
    assert set(found) == expected, describe(run)
    assert "json" in found["line 2"].lower()
    for location in ("line 4 [0]", "line 4 [1]", "line 5", "line 6"):
        assert "object" in found[location], describe(run)
    assert found["line 7"].startswith("$.loyalty.points: "), describe(run)
    assert "integer" in found["line 7"] and "string" in found["line 7"], describe(run)
    assert summary(run) == (len(lines) + 1, len(good), 0, 6)

    assert export(migrated_url, tmp_path) == in_id_order({c["id"]: c for c in good})
    shown = cli("get", "cust_good_3", url=migrated_url, cwd=tmp_path)
    assert shown.returncode == 0, describe(shown)
    assert json.loads(shown.stdout) == good[2]


def test_invalid_utf8_inside_a_string_rejects_only_that_record(
    migrated_url: str, tmp_path: Path
) -> None:
    before, after = make_customer("cust_utf8_before"), make_customer("cust_utf8_after")
    broken = b'{"id": "cust_utf8_broken", "name": "caf\xc3 \xff\xfe end"}\n'
    path = tmp_path / "broken.jsonl"
    path.write_bytes(to_jsonl([before]) + broken + to_jsonl([after]))
    run = cli("import", path, url=migrated_url, cwd=tmp_path)
    assert run.returncode == 1, describe(run)
    found = rejections(run)
    assert set(found) == {"line 2"}, describe(run)
    assert found["line 2"].startswith("$.name: "), describe(run)
    assert re.search(r"unicode|utf-?8|encod", found["line 2"], re.IGNORECASE), describe(run)
    assert summary(run) == (3, 2, 0, 1)
    assert export(migrated_url, tmp_path) == in_id_order({c["id"]: c for c in (before, after)})


def test_a_record_after_a_closing_array_is_stored_or_reported_never_dropped(
    make_database: Any, tmp_path: Path
) -> None:
    # The reader is the same for both backends; SQLite is enough here.
    url: str = make_database("sqlite")
    migrate(url, tmp_path)
    first, after = make_customer("cust_in_array"), make_customer("cust_after_array")
    path = tmp_path / "array-then-line.jsonl"
    path.write_bytes(json.dumps([first]).encode() + b"\n" + to_jsonl([after]))
    run = cli("import", path, url=url, cwd=tmp_path)
    stored = cli_parallel(
        [("get", "cust_in_array"), ("get", "cust_after_array")], url=url, cwd=tmp_path
    )
    assert stored[0].returncode == 0, describe(stored[0])
    reported = run.returncode == 1 and rejections(run) != {}
    assert stored[1].returncode == 0 or reported, (
        "the record after the array was neither stored nor reported\n" + describe(run)
    )


# -- get ---------------------------------------------------------------------------------


def test_get_by_source_id_returns_the_newest_live_customer_with_it(
    migrated_url: str, tmp_path: Path
) -> None:
    shared = "shared@example.com"
    records = [
        make_customer("cust_src_c", source_id=shared, updated_at="2024-03-01T00:00:00.000Z"),
        # The newest holder: neither the last line nor the greatest id.
        make_customer("cust_src_b", source_id=shared, updated_at="2024-05-01T10:00:00.000Z"),
        make_customer("cust_src_d", source_id=shared, updated_at="2024-04-01T00:00:00.000Z"),
        # A stale, older version of the newest holder arrives late.
        make_customer(
            "cust_src_b", source_id=shared, updated_at="2024-01-01T00:00:00.000Z", name="old name"
        ),
        # The holder with the newest time stamp of all gave the source_id up (deleted).
        make_customer("cust_src_a", source_id=shared, updated_at="2024-02-01T00:00:00.000Z"),
        make_customer(
            "cust_src_a",
            source_id=f"{shared}_deleted2024-06-01T00:00:00.000Z",
            updated_at="2024-06-01T00:00:00.000Z",
        ),
        make_customer(
            "cust_src_z", source_id="other@example.com", updated_at="2024-07-01T00:00:00.000Z"
        ),
    ]
    path = tmp_path / "sources.jsonl"
    path.write_bytes(to_jsonl(records))
    imported = cli("import", path, url=migrated_url, cwd=tmp_path)
    assert imported.returncode == 0, describe(imported)

    stored = newest_by_id(records)
    holders = [c for c in stored.values() if c["source_id"] == shared]
    newest = max(holders, key=lambda c: version_of(c) or datetime.min.replace(tzinfo=UTC))
    run = cli("get", "--source-id", shared, url=migrated_url, cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    assert json.loads(run.stdout) == newest

    unknown = cli("get", "--source-id", "nobody@example.com", url=migrated_url, cwd=tmp_path)
    assert unknown.returncode == 1, describe(unknown)
    assert unknown.stdout == ""
    assert "nobody@example.com" in unknown.stderr


# -- usage errors, configuration, secrets ------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("frobnicate",), id="unknown-command"),
        pytest.param(("get",), id="get-without-id-or-source-id"),
        pytest.param(("import", "--batch-size", "0", "data.jsonl"), id="batch-size-0"),
        pytest.param(("--database-url", "mysql://x/y", "get", "cust_1"), id="unsupported-url"),
    ],
)
def test_usage_errors_exit_2_with_a_message(args: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "data.jsonl").write_bytes(to_jsonl([make_customer("cust_1")]))
    # DATABASE_URL is a valid URL: only the usage is wrong.
    run = cli(*args, url=f"sqlite:///{tmp_path / 'valid.db'}", cwd=tmp_path)
    assert run.returncode == 2, describe(run)
    assert run.stderr.strip() != ""
    assert run.stdout == ""


def test_without_any_database_url_customers_db_is_created_in_the_working_directory(
    tmp_path: Path,
) -> None:
    assert list(tmp_path.iterdir()) == []
    migrate(None, tmp_path)
    assert (tmp_path / "customers.db").is_file()


@pytest.mark.parametrize(
    ("args", "where"),
    [*((args, "default") for args in [
        ("get", "cust_NoFileHere1"), ("get", "--source-id", "nobody@example.test"), ("stats",),
        ("find", "--email", "a@b.example"), ("export",), ("events", "--limit", "1"),
        ("import", "-"), ("forget", "cust_NoFileHere2")]),
     *((("get", "cust_NoFileHere3"), where) for where in ["relative", "absolute", "odd name"])],
)
def test_commands_other_than_migrate_never_create_a_sqlite_file(
    tmp_path: Path, args: tuple[str, ...], where: str
) -> None:
    names = {"default": "customers.db", "relative": "sub/store.db",
             "absolute": str(tmp_path / "abs.db"), "odd name": "we ird#1%.db"}
    (tmp_path / "sub").mkdir()
    path = names[where]
    url = None if where == "default" else f"sqlite:///{path}"

    run = cli(*args, url=url, cwd=tmp_path, stdin=b"")

    assert run.returncode == 1, describe(run)
    assert run.stderr.strip() == (
        f"customer-store: no database at {path}: run `customer-store migrate` to create one "
        "there (or give --database-url)"
    ), describe(run)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub"]


def test_an_existing_sqlite_file_is_used_as_it_is_by_a_read_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'we ird#1%.db'}"
    migrate(url, tmp_path)

    run = cli("get", "cust_NotStoredYet", url=url, cwd=tmp_path)

    assert run.returncode == 1 and "no customer with id" in run.stderr, describe(run)


def test_a_password_in_a_postgresql_url_never_appears_in_the_output(tmp_path: Path) -> None:
    password = "s3cr3t-pw"
    url = f"postgresql://postgres:{password}@127.0.0.1:1/nope"
    (tmp_path / "one.jsonl").write_bytes(to_jsonl([make_customer("cust_1")]))
    calls = [
        ("--database-url", url, *args)
        for args in (("get", "x"), ("migrate",), ("import", "one.jsonl"))
    ]
    for run in cli_parallel(calls, url=None, cwd=tmp_path):
        assert run.returncode == 1, describe(run)
        assert run.stderr.strip() != ""
        assert password not in run.stdout
        assert password not in run.stderr


# -- progress ----------------------------------------------------------------------------


def run_with_terminal_stderr(
    args: Sequence[str],
    url: str,
    cwd: Path,
    *,
    columns: int | None = 120,
    stdin: bytes | None = None,
) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal of ``columns`` (one that tells no size
    when None) and ``stdin`` through a pipe; (exit status, what the terminal got)."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "customer_store", *args],
            cwd=cwd,
            env=cli_env(url),
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
    finally:
        os.close(slave)
    if process.stdin is not None:
        with ThreadPoolExecutor(max_workers=1) as feeder:
            # Fed while the terminal is read: a full terminal must not stop the writer.
            fed = feeder.submit(_feed, process.stdin, stdin or b"")
            output = _read_terminal(master, process)
            fed.result()
    else:
        output = _read_terminal(master, process)
    return process.wait(timeout=60), output.decode("utf-8", errors="replace")


def _feed(pipe: Any, data: bytes) -> None:
    with pipe:
        pipe.write(data)


def _read_terminal(master: int, process: subprocess.Popen[bytes]) -> bytes:
    output = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    return bytes(output)


def redraws(terminal: str) -> list[str]:
    """What the terminal showed, one redraw of the bar or one line at a time."""
    return [part for part in re.split(r"[\r\n]+", terminal) if part.strip()]


#: A bar over the bytes of a file at its end: ``100%|████| 3.02M/3.02M [00:03<00:00,
#: 1.01MB/s, 2999 applied, 0 unchanged, 0 stale, 0 forgotten, 1 rejected]``.
FULL_BYTES_BAR_RE = re.compile(
    r"100%\|█+\| ([\d.]+[kMG]?)/\1 \[\d\d:\d\d<00:00, +[\d.?]+[kMG]?B/s, "
    r"(\d+) applied, (\d+) unchanged, (\d+) stale, (\d+) forgotten, (\d+) rejected\] *"
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_import_draws_a_bar_of_the_bytes_read_only_on_a_terminal(
    migrated_url: str, tmp_path: Path
) -> None:
    customers = generated_customers(3_000)
    lines = to_jsonl(customers).splitlines(keepends=True)
    lines.insert(1_500, b'{"id": "cust_broken",\n')
    path = tmp_path / "customers.jsonl"
    path.write_bytes(b"".join(lines))
    broken = "rejected line 1501: invalid JSON: "

    # Without a terminal (stderr a pipe): the rejection and the summary, nothing else.
    run = cli("import", path, url=migrated_url, cwd=tmp_path)
    assert run.returncode == 1, describe(run)
    assert summary(run) == (3_001, 3_000, 0, 1)
    assert run.stderr.startswith(broken), describe(run)
    assert len(run.stderr.splitlines()) == 2, describe(run)
    assert "\r" not in run.stderr and "%" not in run.stderr, describe(run)

    status, terminal = run_with_terminal_stderr(["import", str(path)], migrated_url, tmp_path)
    assert status == 1, terminal
    drawn = redraws(terminal)
    # The bar counted bytes up to the whole file, with the counts after it...
    finals = [m for m in map(FULL_BYTES_BAR_RE.fullmatch, drawn) if m is not None]
    assert finals, terminal
    # (The file's customers are stored already: the same versions again.)
    assert finals[-1].groups()[1:] == ("0", "3000", "0", "0", "1"), terminal
    assert any(re.match(r" +\d%\|", part) for part in drawn[:3]), terminal  # from 0%
    # ... the rejection was printed whole on a line of its own above it, and the summary,
    # unchanged, is the last line.
    assert any(part.startswith(broken) and "%|" not in part for part in drawn), terminal
    assert SUMMARY_RE.fullmatch(drawn[-1]), terminal
    assert "imported 3001 records" in drawn[-1]
    assert "Traceback" not in terminal


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_import_from_a_pipe_draws_the_bytes_read_without_a_percentage(
    migrated_url: str, tmp_path: Path
) -> None:
    data = to_jsonl(make_customer(f"cust_tty_{i}") for i in range(30))
    # On a terminal that tells no size, as a pseudo-terminal nobody sized: drawn all the same.
    status, terminal = run_with_terminal_stderr(
        ["import", "--batch-size", "5"], migrated_url, tmp_path, columns=None, stdin=data
    )
    assert status == 0, terminal
    drawn = redraws(terminal)
    size = f"{len(data) / 1000:.2f}kB"
    assert any(part.startswith(f"{size} [") for part in drawn), terminal
    assert "%" not in terminal
    assert drawn[-1].startswith("imported 30 records in "), terminal


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_export_draws_a_bar_of_the_stored_customers_only_on_a_terminal(
    migrated_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "customers.jsonl"
    path.write_bytes(to_jsonl(generated_customers(1_200)))
    assert cli("import", path, url=migrated_url, cwd=tmp_path).returncode == 0

    run = cli("export", url=migrated_url, cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    assert run.stderr == "exported 1200 customers\n"

    status, terminal = run_with_terminal_stderr(["export"], migrated_url, tmp_path)
    assert status == 0, terminal
    drawn = redraws(terminal)
    assert any(
        re.fullmatch(r"100%\|█+\| 1200/1200 \[.*, +[\d.?]+ customers/s\] *", part)
        for part in drawn
    ), terminal
    assert drawn[-1] == "exported 1200 customers", terminal


# -- a large import ----------------------------------------------------------------------


@pytest.mark.slow
def test_a_large_import_in_small_batches_stores_every_customer(
    migrated_url: str, tmp_path: Path
) -> None:
    customers = generated_customers(LARGE_IMPORT_SIZE)
    path = tmp_path / "large.jsonl"
    path.write_bytes(to_jsonl(customers))
    batch = str(LARGE_IMPORT_BATCH)
    run = cli("import", "--batch-size", batch, path, url=migrated_url, cwd=tmp_path)
    assert run.returncode == 0, describe(run)
    assert summary(run) == (len(customers), len(customers), 0, 0)
    assert "\r" not in run.stderr

    exported = export(migrated_url, tmp_path)
    assert len(exported) == len(customers)
    expected = in_id_order({c["id"]: c for c in customers})
    edges = (0, LARGE_IMPORT_BATCH - 1, LARGE_IMPORT_BATCH, len(customers) // 2, -1)
    for index in edges:
        assert exported[index] == expected[index]
    assert exported == expected


def test_import_in_process_leaves_the_interpreter_as_it_found_it(
    migrated_url: str, tmp_path: Path, valid_examples: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The import tunes the interpreter for itself (a shorter switch interval, the cyclic
    # collector run between batches); a caller running it in process gets both back.
    path = tmp_path / "customers.jsonl"
    path.write_text("".join(json.dumps(raw) + "\n" for raw in valid_examples), encoding="utf-8")
    interval = sys.getswitchinterval()
    assert gc.isenabled()

    status = cli_main(["--database-url", migrated_url, "import", "--batch-size", "2", str(path)])

    assert status == 0, capsys.readouterr().err
    assert gc.isenabled()
    assert sys.getswitchinterval() == interval
    assert f"{len(valid_examples)} records" in capsys.readouterr().err

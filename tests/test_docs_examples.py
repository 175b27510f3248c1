"""Every Python example in README.md and docs/ runs, against real databases of each backend.

The code blocks are read from the documents themselves. Each runs as written, except for
the addresses it names (the database, Voucherify's API, the store's read API), which are
pointed at the test's own; a block that no runner here knows fails the test, so that a new
example is run as soon as it is written.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from repository import CustomerRepository, make_engine, make_session_factory
from repository.db import current_revision
from repository.db.schema import upgrade_to_head
from tests.servers import ROOT, running_server
from tests.voucherify_api import FakeVoucherify, make_customers

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: The database URLs the examples name, replaced by the test's.
_EXAMPLE_URLS = ('"postgresql://app@db.internal:5432/customers"', '"sqlite:///customers.db"')


@dataclass(frozen=True)
class Example:
    document: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"


def examples() -> list[Example]:
    found = []
    for path in DOCUMENTS:
        text = path.read_text(encoding="utf-8")
        for match in _BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            found.append(Example(path.name, line, match.group(1)))
    return found


def with_database(code: str, url: str) -> str:
    """``code`` with the database URLs of the examples replaced by ``url``."""
    replaced = code
    for example_url in _EXAMPLE_URLS:
        replaced = replaced.replace(example_url, repr(url))
    return replaced


def run(example: Example, code: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Execute ``code`` (the example's, adapted); its printed output is swallowed."""
    scope: dict[str, Any] = {"__name__": f"example_{example.line}"}
    scope.update(namespace or {})
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, str(example), "exec"), scope)  # noqa: S102 (the docs' own code)
    return scope


# --- how each example is run ---------------------------------------------------------------


def run_sync_api(example: Example, url: str, _tmp: Path) -> None:
    scope = run(example, with_database(example.code, url))
    scope["engine"].dispose()
    with make_session_factory(make_engine(url))() as session:
        stored = CustomerRepository(session).get("cust_X0hU04x7FeisPnD5lctZcQkI")
    assert stored is None  # the example deletes what it stored, last


def run_tour(example: Example, url: str, _tmp: Path) -> None:
    scope = run(example, with_database(example.code, url))
    assert [c.id for c in scope["found"].customers] == ["cust_T0urJane"]
    assert scope["found"].next_cursor is None
    _assert_deleted(url, "cust_T0urJane")  # the tour deletes what it stored, last


def run_async_tour(example: Example, url: str, _tmp: Path) -> None:
    code = with_database(example.code, url)
    assert code != example.code, "the example's database URL is not where it was"
    run(example, code)
    _assert_deleted(url, "cust_T0urAnn")


def _assert_deleted(url: str, customer_id: str) -> None:
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            repo = CustomerRepository(session)
            assert repo.get(customer_id) is None
            assert repo.deleted_at(customer_id) is not None
    finally:
        engine.dispose()


def run_search(example: Example, url: str, _tmp: Path) -> None:
    run(example, with_database(example.code, url))


def run_fastapi(example: Example, url: str, _tmp: Path) -> None:
    scope = run(example, with_database(example.code, url))
    customer = make_customers(1, seed=18)[0]
    with TestClient(scope["app"]) as client:
        assert client.put("/customers", json=customer).json() == {"outcome": "applied"}
        assert client.get(f"/customers/{customer['id']}").json() == customer
        assert client.get("/customers/cust_NotThere18").status_code == 404
        # Bad input is the client's error, named: never a 500.
        bad = client.put("/customers", json={**customer, "birthdate": "18/02/1990"})
        assert bad.status_code == 422, bad.text
        assert any("$.birthdate" in error for error in bad.json()["detail"]), bad.text
        assert client.put("/customers", json={"id": 18}).status_code == 422
        assert client.get("/customers/cust_%00nul").status_code == 404
        assert client.get("/customers/" + "x" * 300).status_code == 404
        assert client.portal is not None
        client.portal.call(scope["engine"].dispose)


def run_sync_from_voucherify(example: Example, url: str, _tmp: Path) -> None:
    customers = make_customers(30, seed=18)
    with FakeVoucherify(app_id="docs-app", app_token="docs-token") as api:
        api.put_many(customers)
        code = example.code.replace('"https://us1.api.voucherify.io"', repr(api.url))
        assert code != example.code, "the example's api_url is not where it was"
        environ = {"DATABASE_URL": url, "VOUCHERIFY_APP_ID": "docs-app",
                   "VOUCHERIFY_APP_TOKEN": "docs-token"}
        with pytest.MonkeyPatch.context() as patch:
            for name, value in environ.items():
                patch.setenv(name, value)
            scope = run(example, code)
    assert scope["report"].applied == len(customers)
    with make_session_factory(make_engine(url))() as session:
        assert CustomerRepository(session).count() == len(customers)


def run_voucherify_sdk(example: Example, url: str, tmp: Path) -> None:
    customer = make_customers(1, seed=81)[0]
    with make_session_factory(make_engine(url)).begin() as session:
        CustomerRepository(session).upsert(customer)
    credentials = {"CUSTOMER_STORE_APP_ID": "docs-reader",
                   "CUSTOMER_STORE_APP_TOKEN": "docs-reader-token"}
    with running_server(url, log_path=tmp / "serve.log", secret="whsec-docs",
                        env=credentials) as server:
        code = example.code.replace('"http://customer-store:8000"',
                                    repr(f"http://127.0.0.1:{server.port}"))
        code = code.replace('"cust_CSnYd37MXmrbS19XCrghjBsv"', repr(customer["id"]))
        code = code.replace('"jane@example.com"', repr(customer["email"]))
        assert code.count("127.0.0.1") == 1 and customer["id"] in code
        scope = run(example, code, {"app_id": "docs-reader", "app_token": "docs-reader-token"})
    assert scope["customer"].id == customer["id"]
    assert [c.id for c in scope["page"].customers] == [customer["id"]]


def run_read_replicas(example: Example, url: str, _tmp: Path) -> None:
    # The replica is the database itself: a primary serves reads like a standby that is
    # never behind (tests/test_replicas.py runs the router on a real standby).
    code = example.code.replace('"postgresql://app@standby.internal:5432/customers"', repr(url))
    assert code != example.code, "the example's replica URL is not where it was"
    scope = run(example, with_database(code, url))
    assert sum(scope["router"].fallbacks.values()) == 0
    scope["primary"].dispose()
    scope["replica"].dispose()


#: A distinctive line of each example, and how it is run.
RUNNERS: dict[str, Callable[[Example, str, Path], None]] = {
    "outcome = repo.upsert(payload)": run_sync_api,
    "found = repo.find(CustomerFilter(": run_tour,
    "asyncio.run(main())": run_async_tour,
    "page = repo.find(gold, limit=100)": run_search,
    "app = FastAPI()": run_fastapi,
    "report = mirror_customers(Session, client": run_sync_from_voucherify,
    "customers = CustomersApi(ApiClient(configuration))": run_voucherify_sdk,
    "router = ReadRouter(primary, replica": run_read_replicas,
}


def runner_of(example: Example) -> Callable[[Example, str, Path], None]:
    matching = [runner for marker, runner in RUNNERS.items() if marker in example.code]
    assert len(matching) == 1, f"{example}: no runner knows this example; add one to RUNNERS"
    return matching[0]


def test_every_python_example_has_a_runner() -> None:
    found = examples()
    assert len(found) >= len(RUNNERS)
    assert sorted({runner_of(e).__name__ for e in found}) == sorted(
        r.__name__ for r in RUNNERS.values()
    )


@pytest.fixture
def fresh_url(request: pytest.FixtureRequest, make_database: Any) -> Iterator[str]:
    url: str = make_database(request.param)
    upgrade_to_head(url)
    yield url


@pytest.mark.parametrize("fresh_url", ["sqlite", "postgresql"], indirect=True)
@pytest.mark.parametrize("example", examples(), ids=str)
def test_the_example_runs(example: Example, fresh_url: str, tmp_path: Path) -> None:
    runner_of(example)(example, fresh_url, tmp_path)


def test_the_documented_downgrade_one_liner_says_where_the_schema_is(fresh_url_any: str) -> None:
    (line,) = [
        line for path in DOCUMENTS for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("python -c ") and "command.downgrade" in line
    ]
    env = {**os.environ, "DATABASE_URL": fresh_url_any}
    command = line.replace("python -c ", f"{shlex.quote(sys.executable)} -c ", 1)

    done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)

    assert done.returncode == 0, done.stderr
    revisions = sorted(p.name[:4] for p in (ROOT / "migrations" / "versions").glob("0*.py"))
    assert done.stdout.strip() == f"schema at revision {revisions[-2]}", done.stdout
    assert current_revision(make_engine(fresh_url_any)) == revisions[-2]


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url_any(request: pytest.FixtureRequest, make_database: Any) -> str:
    url: str = make_database(request.param)
    upgrade_to_head(url)
    return url


# --- links between the documents ----------------------------------------------------------

_LINK = re.compile(r"\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes of a document's headings."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    headings = re.findall(r"^#+ (.*)$", text, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_every_link_between_the_documents_resolves() -> None:
    broken = []
    for document in DOCUMENTS:
        text = _FENCE.sub("", document.read_text(encoding="utf-8"))
        for target in _LINK.findall(text):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            destination = (document.parent / path).resolve() if path else document
            if not destination.exists():
                broken.append(f"{document.name}: {target}")
            elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
                broken.append(f"{document.name}: {target} (no such heading)")
    assert not broken, broken

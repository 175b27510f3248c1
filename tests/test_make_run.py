"""The README's first command, end to end: ``make run`` in a fresh clone of the repository.

A clone of the committed HEAD (not the working tree) gets its own virtualenv with a regular,
non-editable install; the test then checks what a newcomer sees and that the installed
command works from anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 600  # seconds; a cold pip install can be slow
# Variables that would leak the outer make (`make test VENV=...`), an outer virtualenv or a
# developer's database into the clone's `make run`.
_LEAKY = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "VIRTUAL_ENV", "PYTHONPATH",
          "PYTHONHOME", "DATABASE_URL")


@dataclass
class Checkout:
    path: Path
    env: dict[str, str]
    first_run: subprocess.CompletedProcess[str]

    @property
    def venv_bin(self) -> Path:
        return self.path / ".venv" / "bin"


def _base_python() -> str:
    base = getattr(sys, "_base_executable", None) or shutil.which("python3")
    if not base:
        pytest.skip("no Python interpreter to build the clone's virtualenv with")
    return str(base)


def _make_run(checkout: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "run", f"PYTHON={_base_python()}", "VENV=.venv"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )


def _printed_customer(stdout: str) -> Any:
    """The JSON object that ``customer-store get`` printed (indented, amid make's echo)."""
    lines = stdout.splitlines()
    assert "{" in lines, f"no JSON object in the output of make run:\n{stdout}"
    start = lines.index("{")
    end = lines.index("}", start)
    return json.loads("\n".join(lines[start : end + 1]))


def _sample_lines(checkout: Path) -> list[Any]:
    text = (checkout / "samples" / "customers.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Checkout:
    for tool in ("git", "make"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    inside = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "--is-inside-work-tree"],
        capture_output=True, text=True, check=False,
    )
    if inside.returncode != 0:
        pytest.skip("not running from a git checkout")
    path = tmp_path_factory.mktemp("clone") / "customer-store"
    subprocess.run(
        ["git", "clone", "--quiet", str(REPO_ROOT), str(path)],
        check=True, capture_output=True, text=True, timeout=TIMEOUT,
    )
    env = {key: value for key, value in os.environ.items() if key not in _LEAKY}
    return Checkout(path, env, _make_run(path, env))


def test_make_run_in_a_fresh_clone_prints_a_sample_customer_as_it_was_imported(
    checkout: Checkout,
) -> None:
    result = checkout.first_run
    assert result.returncode == 0, f"make run failed:\n{result.stdout}\n{result.stderr}"
    assert "0 rejected" in result.stderr
    assert (checkout.path / "customers.db").is_file()

    printed = _printed_customer(result.stdout)
    same_id = [line for line in _sample_lines(checkout.path) if line["id"] == printed["id"]]
    assert same_id == [printed]


def test_make_run_twice_in_a_row_succeeds_and_prints_the_same_customer(
    checkout: Checkout,
) -> None:
    assert checkout.first_run.returncode == 0, checkout.first_run.stderr
    second = _make_run(checkout.path, checkout.env)
    assert second.returncode == 0, f"second make run failed:\n{second.stdout}\n{second.stderr}"
    assert "0 rejected" in second.stderr
    assert _printed_customer(second.stdout) == _printed_customer(checkout.first_run.stdout)


def test_installed_customer_store_migrates_a_database_outside_the_checkout(
    checkout: Checkout, tmp_path: Path
) -> None:
    assert checkout.first_run.returncode == 0, checkout.first_run.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    database = tmp_path / "x.db"
    cli = str(checkout.venv_bin / "customer-store")

    # The clone's venv holds a real copy of the package, not a link back to the clone.
    located = subprocess.run(
        [str(checkout.venv_bin / "python"), "-c",
         "import migrations, repository; print(migrations.__file__); print(repository.__file__)"],
        cwd=elsewhere, env=checkout.env, capture_output=True, text=True, timeout=TIMEOUT,
        check=True,
    )
    for module_file in located.stdout.split():
        assert "site-packages" in Path(module_file).parts, module_file

    migrate = subprocess.run(
        [cli, "--database-url", f"sqlite:///{database}", "migrate"],
        cwd=elsewhere, env=checkout.env, capture_output=True, text=True, timeout=TIMEOUT,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "(head)" in migrate.stderr
    assert database.is_file()
    assert not (elsewhere / "customers.db").exists()

    samples = checkout.path / "samples" / "customers.jsonl"
    imported = subprocess.run(
        [cli, "--database-url", f"sqlite:///{database}", "import", str(samples)],
        cwd=elsewhere, env=checkout.env, capture_output=True, text=True, timeout=TIMEOUT,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    count = len(_sample_lines(checkout.path))
    assert f"imported {count} records" in imported.stderr

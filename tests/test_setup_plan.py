"""scripts/setup.sh picks the right TimescaleDB branch for each Debian release.

Only `--dry-run` is run here: no network, no root, nothing changed. The script runs
from a copy in a temporary folder, so the test also proves that a dry run writes
nothing (no .venv, no .beiflow) next to it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "setup.sh"

BUILD_15 = "plan: build timescaledb 2.19.3 from trixie source against PG 15"
BINARY = re.compile(
    r"^plan: install postgresql-17 postgresql-17-timescaledb; "
    r"cluster 17/beiflow on port (\d+)$", re.M)


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A copy of the script with a pyproject.toml beside it, as in the repo."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(SCRIPT, tmp_path / "scripts" / "setup.sh")
    shutil.copy2(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def dry_run(sandbox: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEIFLOW_SETUP_")}
    env.pop("BEIFLOW_ASSUME_TIMESCALE_BINARY", None)
    before = sorted(p.name for p in sandbox.iterdir())
    proc = subprocess.run(
        ["bash", str(sandbox / "scripts" / "setup.sh"), "--dry-run", *args],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60,
        check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in sandbox.iterdir()) == before, "a dry run wrote files"
    lines = proc.stdout.splitlines()
    assert lines, "no plan printed"
    assert all(line.startswith("plan: ") for line in lines), proc.stdout
    return proc.stdout


def plan_lines(out: str) -> list[str]:
    return out.splitlines()


def test_debian_12_builds_from_trixie_source(sandbox: Path) -> None:
    out = dry_run(sandbox, "--release", "12", "--pg-version", "15")
    assert BUILD_15 in plan_lines(out)
    assert not BINARY.search(out)
    assert "postgresql-17" not in out
    assert "ensure PostgreSQL 15/" in out
    assert "BEIFLOW_ADMIN_DSN=postgresql://root@127.0.0.1:" in out


def test_debian_12_ignores_a_binary_package(sandbox: Path) -> None:
    # Debian 12 has no timescaledb package: the build branch, whatever apt-cache says
    out = dry_run(sandbox, "--release", "12", "--pg-version", "15",
                  "--assume-timescale-binary", "yes")
    assert BUILD_15 in plan_lines(out)
    assert not BINARY.search(out)


def test_debian_13_with_binary_package_uses_its_own_cluster(sandbox: Path) -> None:
    out = dry_run(sandbox, "--release", "13", "--pg-version", "15",
                  "--assume-timescale-binary", "yes")
    m = BINARY.search(out)
    assert m, out
    port = int(m.group(1))
    assert port >= 5433        # never the existing cluster's standard port
    assert "from trixie source" not in out
    assert "ensure PostgreSQL 17/beiflow is running" in out
    assert f"BEIFLOW_ADMIN_DSN=postgresql://root@127.0.0.1:{port}/postgres" in out


def test_debian_13_without_binary_package_builds_from_source(sandbox: Path) -> None:
    out = dry_run(sandbox, "--release", "13", "--pg-version", "15",
                  "--assume-timescale-binary", "no")
    assert BUILD_15 in plan_lines(out)
    assert not BINARY.search(out)
    assert "17/beiflow" not in out


def test_overrides_also_come_from_the_environment(sandbox: Path) -> None:
    env = os.environ.copy()
    env.update(BEIFLOW_SETUP_RELEASE="13", BEIFLOW_ASSUME_TIMESCALE_BINARY="yes",
               BEIFLOW_SETUP_PG_VERSION="15")
    proc = subprocess.run(["bash", str(sandbox / "scripts" / "setup.sh"), "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert BINARY.search(proc.stdout)


def test_python_mode_plans_only_the_venv(sandbox: Path) -> None:
    out = dry_run(sandbox, "python", "--release", "12")
    assert "pip install -e '.[dev]'" in out
    assert "build timescaledb" not in out
    assert "postgresql-17" not in out
    assert ".beiflow/env" not in out


@pytest.mark.parametrize("args", [
    ["--release", "bookworm"],
    ["--assume-timescale-binary", "maybe"],
    ["--frobnicate"],
])
def test_bad_arguments_fail(sandbox: Path, args: list[str]) -> None:
    proc = subprocess.run(["bash", str(sandbox / "scripts" / "setup.sh"), "--dry-run", *args],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "setup: error:" in proc.stderr

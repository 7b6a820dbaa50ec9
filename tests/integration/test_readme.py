"""Every shell command of README.md, in the order written, in one fresh folder (slow: tens of
minutes on 2 CPU cores; `bash scripts/test.sh --slow`).

Commands marked ``# needs: ...`` (GPU, several GPUs, the test suite itself) are skipped.
``bash scripts/quickstart.sh`` runs as ``obliviate quickstart``: the script is the set-up
(tests/unit/scripts/test_setup_env.py; run here it would install into the test's own
environment) followed by exactly that command. ``../shared`` is the data folder beside the
repository. With ``README_TIMES=FILE`` the wall-clock and CPU time and the load average of
each command are written to FILE (the README's times come from there).
"""

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.shell_examples import shell_commands

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
REPLACED = {"bash scripts/quickstart.sh": "obliviate quickstart"}
NOT_RUN = {"source .venv/bin/activate"}  # the test's environment is active already


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@pytest.mark.slow
def test_readme_commands_in_order(tmp_path):
    if not (SHARED / "data" / "cifar10_jpg").is_dir() or not (SHARED / "data" / "tofu").is_dir():
        pytest.skip("../shared/data (CIFAR-10, TOFU) is not available")
    commands = shell_commands(REPO / "README.md")
    assert len(commands) > 15
    (tmp_path / "accelerate").symlink_to(REPO / "accelerate")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH")) if p),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "offline", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    times, skipped = [], []
    for cmd in commands:
        if cmd.skip or cmd.text in NOT_RUN:
            skipped.append((cmd.line, cmd.text[:60], cmd.skip or "environment"))
            continue
        text = REPLACED.get(cmd.text, cmd.text).replace("../shared/", f"{SHARED}/")
        load, cpu0, t0 = os.getloadavg()[0], _cpu_children(), time.perf_counter()
        proc = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=4 * 3600)
        wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"README.md line {cmd.line}: {cmd.text}\n{output[-4000:]}"
        assert "Traceback" not in output, f"README.md line {cmd.line}: {cmd.text}\n{output[-4000:]}"
        times.append({"line": cmd.line, "command": cmd.text, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                      "load_start": round(load, 2), "load_end": round(os.getloadavg()[0], 2)})
        if os.environ.get("README_TIMES"):
            Path(os.environ["README_TIMES"]).write_text(json.dumps({"times": times, "skipped": skipped}, indent=1))
    # the folders the README's later commands refer to were created by the earlier ones
    out = tmp_path / "outputs"
    for name in ("quickstart-digits", "unlearn-SCRUB-digits-class9", "train-digits-class9", "unlearn-RL-digits-class9",
                 "quickstart-llm", "train-synthetic-TOFU_QA_FORGET10", "sweep-digits_GA"):
        assert (out / name).is_dir(), name
    assert (tmp_path / "report.html").is_file() and (tmp_path / "compare.csv").is_file()
    assert {s[2].split(" (")[0] for s in skipped} >= {"GPU", "2 GPUs", "the test suite itself"}

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from obliviate.io import atomic_write_json, read_json


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_json(target, {"v": 2})
    assert read_json(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_nan_becomes_null(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": float("nan"), "b": [float("inf"), 1.5]})
    assert read_json(tmp_path / "x.json") == {"a": None, "b": [None, 1.5]}


def test_sigkill_during_writes_never_truncates(tmp_path):
    target = tmp_path / "big.json"
    script = (
        "import sys; from obliviate.io import atomic_write_json\n"
        "i = 0\n"
        "while True:\n"
        "    atomic_write_json(sys.argv[1], {'i': i, 'payload': list(range(200000))}); i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(target)])
    deadline = time.time() + 30
    while not target.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = json.loads(target.read_text())  # always a complete document
    assert len(data["payload"]) == 200000


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_result_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = atomic_write_json(tmp_path / "metrics.json", {"v": 1})
        # what open(path, "w") would give, not mkstemp's 0o600
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    mode = os.stat(path).st_mode & 0o777
    assert mode == 0o666 & ~umask == os.stat(tmp_path / "plain.txt").st_mode & 0o777


def test_replacing_a_file_keeps_its_mode(tmp_path):
    path = atomic_write_json(tmp_path / "metrics.json", {"v": 1})
    os.chmod(path, 0o640)
    atomic_write_json(path, {"v": 2})
    assert os.stat(path).st_mode & 0o777 == 0o640 and read_json(path) == {"v": 2}

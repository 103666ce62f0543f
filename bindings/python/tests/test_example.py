"""The two-terminal example, run as two processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import DEADLINE

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "agents.py"


def test_two_agents_exchange_tasks(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    worker = subprocess.Popen(
        [sys.executable, str(EXAMPLE), "worker", "--home", str(tmp_path / "w"), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert worker.stdout is not None
        fields = {}
        for _ in range(3):
            name, value = worker.stdout.readline().split(maxsplit=1)
            fields[name] = value.strip()
        url = fields["listening"].split("at ", 1)[1]
        base = [sys.executable, str(EXAMPLE), "requester", "--home", str(tmp_path / "r")]
        target = ["--url", url, "--key", fields["public_key"]]
        out = subprocess.run(
            base + target + ["sum", "1", "2", "3"], capture_output=True, text=True, timeout=DEADLINE, env=env
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0] == "{'ok': True, 'result': 6}"
        out = subprocess.run(
            base + target + ["dance"], capture_output=True, text=True, timeout=DEADLINE, env=env
        )
        assert "unknown op 'dance'" in out.stdout, out.stdout + out.stderr
        line = worker.stdout.readline()
        assert line.startswith("requester: {'op': 'sum'"), line
    finally:
        worker.terminate()
        worker.wait(DEADLINE)

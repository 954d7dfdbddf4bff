"""``sparsecodes serve`` as a new user meets it: a missing model folder and a taken port are refused at
once, with the flag or variable to change, before any other work (demo bundles, loading models)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.server import free_port

SERVE = [sys.executable, "-m", "sparsecodes", "serve"]


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SERVE, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_a_missing_model_folder_exits_with_a_message_suggesting_demo(tmp_path: Path) -> None:
    done = serve("--models", str(tmp_path / "modles"), "--port", str(free_port()))
    assert done.returncode == 2, done.stderr
    assert "model folder" in done.stderr and "does not exist" in done.stderr and "--demo" in done.stderr
    assert str(tmp_path / "modles") in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_taken_port_names_the_flag_and_the_variable_before_any_work(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # --demo on an empty folder would build the demo bundles first: the port is checked before that.
        for done in (
            serve("--models", str(tmp_path / "m"), "--demo", "--port", str(port)),
            serve("--models", str(tmp_path / "m"), "--demo", env={"SPARSECODES_PORT": str(port)}),
        ):
            assert done.returncode == 2, done.stderr
            assert f"port {port}" in done.stderr and "in use" in done.stderr, done.stderr
            assert "--port" in done.stderr and "SPARSECODES_PORT" in done.stderr
            assert "Traceback" not in done.stderr and "demo" not in done.stdout
            assert not (tmp_path / "m").exists(), "no work was done before the port was checked"

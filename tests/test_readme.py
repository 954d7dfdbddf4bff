"""The README's commands, run verbatim against a live server (so they cannot rot again).

Every ``sh`` block and ``python`` block that talks to ``localhost:8000`` is run as written, in order, against
``sparsecodes serve --demo`` listening on the README's own address (127.0.0.1:8000). So that the port is
never taken by anything else on the machine, the server and the commands run in a private network
namespace (``unshare --net --map-root-user``, loopback only), where 127.0.0.1:8000 is always free. The
shell blocks run under the system's PATH without the project's venv first (the base64 example must work
with a plain ``python3``); the Python block runs in the venv, as the README says.

Blocks that do not talk to a server are listed in ``NOT_RUN`` with the reason (and tested elsewhere); a
new block must be either run here or listed there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent
NOT_RUN = {
    "make serve": "tests/deploy/test_first_run.py (`make first-run-test`) runs it on a fresh clone",
    "make install && source .venv/bin/activate": "trains and exports (torch); the CLI tests cover train/export/serve",
    "sparsecodes/": "the layout, not commands",
    "# extract:": "needs a corpus and torch; tests/train/test_activations.py and test_shards.py run these commands",
    "import numpy as np, tritonclient.grpc": "the gRPC port; tests/serve/test_grpc.py makes these calls with tritonclient",
    "make install-peers": "needs SAEs of the peer libraries; tests/export/test_import.py imports and serves them",
}


def blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every fenced block in the README, in order."""
    return [
        (m.group(1), m.group(2))
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", README.read_text(), re.S | re.M)
    ]


def _listed(text: str) -> bool:
    return any(text.strip().startswith(k) for k in NOT_RUN)


def live_blocks() -> list[tuple[str, str]]:
    return [
        (lang, text)
        for lang, text in blocks()
        if lang in ("sh", "python")
        and not _listed(text)
        and re.search(r"(localhost|127\.0\.0\.1):8000", text)
    ]


def test_every_block_is_run_or_listed() -> None:
    live = live_blocks()
    assert any(lang == "sh" for lang, _ in live) and any(lang == "python" for lang, _ in live)
    for lang, text in blocks():
        if (lang, text) in live:
            continue
        assert _listed(text), (
            f"README block neither run nor listed in NOT_RUN: {text.strip().splitlines()[0]!r}"
        )


def _driver(tmp: Path, models: Path) -> str:
    """The shell script run inside the namespace: loopback up, the server on its defaults, each block."""
    lines = [
        "set -u",
        "ip link set lo up",
        f"{VENV_BIN}/sparsecodes serve --demo --models {models} > {tmp}/server.log 2>&1 &",
        "server=$!",
        "for i in $(seq 600); do curl -sf localhost:8000/v2/health/ready > /dev/null && break; sleep 0.2; done",
    ]
    system_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != VENV_BIN)
    for i, (lang, text) in enumerate(live_blocks()):
        path = tmp / f"block-{i}.{'sh' if lang == 'sh' else 'py'}"
        path.write_text(text)
        run = (
            f"PATH={system_path} bash -e -o pipefail {path}" if lang == "sh" else f"{VENV_BIN}/python {path}"
        )
        lines.append(f"(cd {tmp} && {run}) > {tmp}/out-{i} 2>&1; echo $? > {tmp}/rc-{i}")
    lines += ["kill -TERM $server", "wait $server || true"]
    return "\n".join(lines) + "\n"


def test_readme_commands_run_verbatim_against_a_live_server(tmp_path: Path) -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.fail("this test needs unshare (util-linux) and ip (iproute2) for a private loopback")
    probe = subprocess.run(["unshare", "--net", "--map-root-user", "true"], capture_output=True, text=True)
    assert probe.returncode == 0, f"unprivileged network namespaces are needed (unshare -rn): {probe.stderr}"
    script = tmp_path / "driver.sh"
    script.write_text(_driver(tmp_path, tmp_path / "models"))
    subprocess.run(["unshare", "--net", "--map-root-user", "bash", str(script)], check=True, timeout=300)
    server_log = (tmp_path / "server.log").read_text(errors="replace")
    for i, (_, text) in enumerate(live_blocks()):
        rc = int((tmp_path / f"rc-{i}").read_text())
        out = (tmp_path / f"out-{i}").read_text(errors="replace")
        where = f"README block {i} ({text.strip().splitlines()[0]!r})"
        assert rc == 0, f"{where} exited {rc}:\n{out[-3000:]}\nserver log:\n{server_log[-2000:]}"
        assert '"error"' not in out and "Traceback" not in out, f"{where} printed an error:\n{out[-3000:]}"
        assert out.strip(), f"{where} printed nothing"
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG", "curl -o loss.png saved the plot"

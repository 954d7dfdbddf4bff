"""docs/deployment.md and the chart README agree with the chart, and the system-dependency script that
CI runs before these tests detects what is missing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.support.deploy_contract import CHART, REPO, SETTINGS

DOC = REPO / "docs" / "deployment.md"
SCRIPT = REPO / "scripts" / "install-system-deps.sh"


def configuration_table() -> dict[str, tuple[str, str]]:
    """variable → (default, Helm value) from the configuration table of docs/deployment.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and (m := re.fullmatch(r"`(SPARSECODES_\w+)`", cells[0])):
            default = "" if cells[1] == "*(empty)*" else cells[1].strip("`")
            rows[m.group(1)] = (default, cells[2])
    return rows


def test_configuration_table_lists_every_setting_with_its_default() -> None:
    table = configuration_table()
    assert set(table) == set(SETTINGS)
    for name, (default, _) in table.items():
        assert default == SETTINGS[name], f"{name}: documented {default!r}, actual {SETTINGS[name]!r}"


def test_configuration_table_names_the_helm_value_of_each_setting() -> None:
    config = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    documented = {}
    for name, (_, helm_value) in configuration_table().items():
        if m := re.fullmatch(r"`config\.(\w+)`", helm_value):
            documented[name] = m.group(1)
    assert set(documented.values()) == set(config)
    for name, key in documented.items():
        assert name == "SPARSECODES_" + re.sub(r"(?<!^)(?=[A-Z])", "_", key).upper()


def test_docs_give_the_commands_with_and_without_a_registry_and_the_image_sizes() -> None:
    text = DOC.read_text()
    assert "**With registry access**" in text and "### Without a registry" in text
    for command in (
        "scripts/wheelhouse.sh",
        "scripts/make-base-image.sh",
        "--build-arg PYTHON_IMAGE=",
        "make image-test",
    ):
        assert command in text, command
    sizes = re.findall(r"^\| `(sparsecodes[^`]*)` \| ([\d.]+) MB \|", text, re.MULTILINE)
    assert {"sparsecodes", "sparsecodes/python:3.11-bookworm"} <= {name for name, _ in sizes}, sizes
    assert all(float(mb) < 500 for name, mb in sizes if name == "sparsecodes"), (
        "the serving image goal is < 500 MB"
    )


def test_every_script_the_docs_name_exists() -> None:
    for script in set(re.findall(r"scripts/[\w-]+\.sh", DOC.read_text())):
        assert (REPO / script).is_file(), script


def test_chart_readme_covers_every_top_level_value() -> None:
    readme = (CHART / "README.md").read_text()
    for key in yaml.safe_load((CHART / "values.yaml").read_text()):
        assert f"`{key}" in readme, f"helm/sparsecodes/README.md does not mention {key}"


def test_system_deps_script_reports_what_is_missing(tmp_path: Path) -> None:
    """With nothing on PATH the script names both packages and fails, without running apt."""
    result = subprocess.run(
        ["/bin/bash", str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        env={"PATH": str(tmp_path)},
        timeout=30,
    )
    assert result.returncode == 1
    assert "redis-server" in result.stderr and "docker-compose" in result.stderr


def test_system_deps_are_installed() -> None:
    """CI runs scripts/install-system-deps.sh (make system-deps) first; afterwards nothing is missing."""
    result = subprocess.run(["bash", str(SCRIPT), "--check"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr

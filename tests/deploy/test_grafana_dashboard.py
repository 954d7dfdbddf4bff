"""The Grafana dashboard (docker/grafana/dashboards/sparsecodes.json) against Grafana's own schema, since
no Grafana runs here (no Debian package, no pullable image). The schema: @grafana/schema, the TypeScript
types Grafana generates from its CUE kinds, at the version of the compose file's Grafana (11.1.4). The
dashboard is written out as a TypeScript object literal that must `satisfies` the Dashboard type, and
each panel's options and field config the types of its panel plugin, and the TypeScript compiler checks
it: unknown keys (a typo, an option a Grafana release dropped) and wrong types fail. `make image-test`
installs the two npm packages (tests/deploy/grafana/package-lock.json) into .cache/grafana-schema."""

from __future__ import annotations

import json
import shlex
import subprocess
from typing import Any

import pytest

from tests.support.deploy_contract import DOCKER, REPO

pytestmark = pytest.mark.image_test

DASHBOARD = DOCKER / "grafana" / "dashboards" / "sparsecodes.json"
SCHEMA_DIR = REPO / ".cache" / "grafana-schema"
TSC = SCHEMA_DIR / "node_modules" / "typescript" / "bin" / "tsc"
PANEL_TYPES = {"timeseries": "TimeSeriesPanelCfg", "heatmap": "HeatmapPanelCfg", "table": "TablePanelCfg"}
PRELUDE = """\
import type { Dashboard } from "@grafana/schema";
{imports}
// Grafana's enums as the literal values a JSON file holds (a TypeScript string enum admits only its members).
type Json<T> = T extends string ? `${T}` : T extends readonly (infer U)[] ? Json<U>[]
  : T extends object ? { [K in keyof T]: Json<T[K]> } : T;
// A panel may leave options out: Grafana fills them from the panel plugin's defaults. Unknown keys still fail.
type Loose<T> = T extends string ? `${T}` : T extends readonly (infer U)[] ? Loose<U>[]
  : T extends object ? { [K in keyof T]?: Loose<T[K]> } : T;
"""


def typescript_check(dashboard: dict[str, Any]) -> str:
    """The dashboard as TypeScript: the whole model against Dashboard, each panel's options and custom
    field config against its plugin's Options and FieldConfig."""
    imports = "\n".join(
        f'import type * as {kind} from "@grafana/schema/dist/esm/raw/composable/{kind}/panelcfg/x/{module}_types.gen";'
        for kind, module in PANEL_TYPES.items()
    )
    lines = [
        PRELUDE.replace("{imports}", imports),
        f"export const dashboard = {json.dumps(dashboard, indent=2)} satisfies Json<Dashboard>;",
    ]
    for panel in dashboard["panels"]:
        kind = panel["type"]
        if kind == "row":
            continue
        assert kind in PANEL_TYPES, (
            f"panel {panel['title']!r}: type {kind!r} has no schema check here; add it to PANEL_TYPES"
        )
        lines.append(f"// panel {panel['id']}: {panel['title']}")
        lines.append(
            f"export const options{panel['id']} = {json.dumps(panel.get('options', {}))} satisfies Loose<{kind}.Options>;"
        )
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
        lines.append(
            f"export const custom{panel['id']} = {json.dumps(custom)} satisfies Loose<{kind}.FieldConfig>;"
        )
    return "\n".join(lines) + "\n"


def compile_errors(dashboard: dict[str, Any], name: str) -> list[str]:
    """tsc's errors for the dashboard, each with the line of TypeScript it points at."""
    assert TSC.exists(), f"{TSC} is missing: `make image-test` installs it (npm ci in {SCHEMA_DIR})"
    source = SCHEMA_DIR / f"{name}.ts"
    source.write_text(typescript_check(dashboard))
    options = shlex.split(
        "--noEmit --strict --target es2022 --module esnext --moduleResolution bundler --skipLibCheck"
    )
    command = ["node", str(TSC), *options, source.name]
    result = subprocess.run(command, cwd=SCHEMA_DIR, capture_output=True, text=True, timeout=180)
    text = source.read_text().splitlines()
    errors = []
    for line in (result.stdout + result.stderr).splitlines():
        if f"{source.name}(" in line:
            row = int(line.split("(")[1].split(",")[0])
            errors.append(f"{line}\n    at: {text[row - 1].strip()[:200]}")
    assert errors or result.returncode == 0, result.stdout + result.stderr
    return errors


def test_the_dashboard_satisfies_grafanas_schema() -> None:
    errors = compile_errors(json.loads(DASHBOARD.read_text()), "dashboard")
    assert not errors, "\n".join(errors)


def test_the_check_rejects_unknown_keys_and_wrong_types() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    dashboard["refresh"] = 10  # a string in the schema ("10s")
    heatmap = next(p for p in dashboard["panels"] if p["type"] == "heatmap")
    heatmap["options"]["tooltip"] = {"show": True}  # Grafana 9's option; now tooltip.mode
    timeseries = next(p for p in dashboard["panels"] if p["type"] == "timeseries")
    timeseries["gridpos"] = timeseries.pop("gridPos")
    errors = "\n".join(compile_errors(dashboard, "broken"))
    for expected in ('"refresh"', '"show"', '"gridpos"'):
        assert expected in errors, f"{expected} not reported:\n{errors}"

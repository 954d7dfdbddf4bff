"""``sparsecodes bench export`` end to end at toy sizes: JSON written, ratios from this run, and only the
``## Export`` section of the markdown file rewritten."""

from __future__ import annotations

import json
from pathlib import Path

from bench.export import SECTION, write_section
from sparsecodes.cli import main


def test_bench_export_writes_json_and_its_markdown_section(tmp_path: Path) -> None:
    md = tmp_path / "benchmarks.md"
    md.write_text(
        "# Benchmarks\n\n## Training\n\nkeep me\n\n## Export\n\nold numbers\n\n## Serving\n\nkeep me too\n"
    )
    out = tmp_path / "export.json"
    argv = ["bench", "export", "--d-in", "16", "--d-sae", "64", "--k", "4", "--batch-sizes", "1", "64"]
    argv += ["--seconds", "0.01", "--threads", "1", "--out", str(out), "--markdown", str(md)]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert {t["engine"] for t in results["timings"]} == {"pytorch", "onnxruntime"}
    assert all(t["rows_per_s"] > 0 for t in results["timings"])
    assert set(results["ratios"]["encoder_onnxruntime_over_pytorch"]) == {"1", "64"}
    assert results["truncation"]["cut_point"] == 16 and results["truncation"]["flops_ratio"] == 0.25
    assert results["truncation"]["params_ratio"] < 0.3
    text = md.read_text()
    assert "old numbers" not in text and "keep me\n" in text and "keep me too" in text
    assert text.index("## Training") < text.index(SECTION) < text.index("## Serving")
    assert "| 64 |" in text and "sparsecodes bench export" in text


def test_write_section_appends_when_missing_and_creates_the_file(tmp_path: Path) -> None:
    md = tmp_path / "docs" / "benchmarks.md"
    write_section(md, f"{SECTION}\n\nfirst\n")
    write_section(md, f"{SECTION}\n\nsecond\n")
    assert md.read_text() == f"# Benchmarks\n\n{SECTION}\n\nsecond\n"

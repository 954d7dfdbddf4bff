"""``sparsecodes reproduce``: every study runs end to end in --quick mode and writes well-formed output.

These tests check structure (keys, finite numbers, one row per group/kind/noise level, plots that are
PNG files, a verdict from the allowed set), not the verdicts themselves: quick mode trains too briefly
for its numbers to mean anything.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from sparsecodes.cli import main
from sparsecodes.train.reproduce import STUDIES
from sparsecodes.train.reproduce.common import VERDICTS, aggregate, pm, summary

TOP_KEYS = {"study", "claim", "setup", "command", "quick", "seeds", "settings", "tables", "verdict", "plots",
            "wall_seconds"}
# Per study: summary columns that may be undefined (null) by construction.
MAY_BE_NULL = {"ad_group", "k_hat_mean", "pearson", "spearman", "topk_fvu", "fvu_diff", "topk_cos", "cos_diff",
               "score"}


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every study run once in quick mode (one seed) through the real command line."""
    root = tmp_path_factory.mktemp("reproduce")
    assert main(["reproduce", "all", "--out", str(root), "--quick", "--no-progress"]) == 0
    return {name: root / name for name in STUDIES}


def load(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "results.json").read_text())


def rows(doc: dict[str, Any], title_start: str) -> list[dict[str, Any]]:
    (table,) = [t for title, t in doc["tables"].items() if title.startswith(title_start)]
    return table["rows"]


def mean(row: dict[str, Any], key: str) -> float:
    return row[key]["mean"]


# -- every study -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(STUDIES))
def test_study_writes_results_json_md_and_plots(quick_runs: dict[str, Path], name: str) -> None:
    folder = quick_runs[name]
    doc = load(folder)
    assert set(doc) >= TOP_KEYS, TOP_KEYS - set(doc)
    assert doc["study"] == name and doc["quick"] is True and doc["seeds"] == [0]
    assert doc["verdict"]["status"] in VERDICTS and doc["verdict"]["reason"] and doc["verdict"]["criterion"]
    assert f"reproduce {name}" in doc["command"] and "--quick" in doc["command"]
    assert doc["plots"], "every study draws at least one plot"
    for plot in doc["plots"]:
        data = (folder / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000, plot
    md = (folder / "results.md").read_text()
    assert doc["claim"] in md and f"**Verdict: {doc['verdict']['status']}.**" in md
    for title in doc["tables"]:
        assert f"### {title}" in md
    for plot in doc["plots"]:
        assert f"]({plot})" in md
    assert not list(folder.parent.glob(f".{name}.*")), "no staging folder is left behind"


@pytest.mark.parametrize("name", list(STUDIES))
def test_every_number_is_a_finite_summary_over_the_seeds(quick_runs: dict[str, Path], name: str) -> None:
    doc = load(quick_runs[name])
    n_seeds = len(doc["seeds"])
    for title, table in doc["tables"].items():
        assert table["rows"], title
        for row in table["rows"]:
            assert set(table["columns"]) <= set(row), (title, row)
            for key, value in row.items():
                if isinstance(value, dict):  # a summary over seeds
                    assert set(value) == {"mean", "std", "n", "values"}
                    if value["mean"] is None:
                        assert key in MAY_BE_NULL, (title, key)
                        continue
                    assert math.isfinite(value["mean"]) and value["std"] >= 0, (title, key, value)
                    assert len(value["values"]) == n_seeds and value["n"] >= 1
                elif isinstance(value, float):
                    assert math.isfinite(value) or key in MAY_BE_NULL, (title, key)


# -- study-specific structure ------------------------------------------------------------------------


def test_vaease_subspaces_has_one_row_per_config_kind_and_subspace(quick_runs: dict[str, Path]) -> None:
    doc = load(quick_runs["vaease-subspaces"])
    per_group = rows(doc, "Estimated dimension")
    configs = doc["settings"]["configs"]
    expected = {(c, k, g, d) for c, dims in configs.items() for k in ("vaease", "vae", "relu_l1", "topk")
                for g, d in enumerate(dims)}
    assert {(r["config"], r["kind"], r["group"], r["true_dim"]) for r in per_group} == expected
    assert len(per_group) == len(expected)
    assert any(sorted(d) != [d[0]] * len(d) for d in configs.values()), "one configuration has unequal dims"
    for r in per_group:
        assert 0 <= mean(r, "est_dim") <= 48
        assert (r["ad_group"]["mean"] is None) == (r["kind"] not in ("vaease", "vae"))
    per_model = rows(doc, "Reconstruction")
    assert len(per_model) == 8 and all(0 < mean(r, "same_set_share") <= 1 for r in per_model)


def test_softsae_manifold_has_one_row_per_kind_and_group(quick_runs: dict[str, Path]) -> None:
    doc = load(quick_runs["softsae-manifold"])
    dims = doc["settings"]["dims"]
    per_group = rows(doc, "Mean active latents")
    assert [(r["kind"], r["true_dim"]) for r in per_group] == [(k, d) for k in ("softsae", "batchtopk", "topk")
                                                               for d in dims]
    assert all((r["k_hat_mean"]["mean"] is not None) == (r["kind"] == "softsae") for r in per_group)
    per_model = {r["kind"]: r for r in rows(doc, "Allocation")}
    assert set(per_model) == {"softsae", "batchtopk", "topk"}
    assert mean(per_model["topk"], "l0_std") == pytest.approx(0.0, abs=1e-9), "TopK's L0 is fixed"
    for r in per_model.values():
        assert r["pearson"]["mean"] is None or -1 <= mean(r, "pearson") <= 1


def test_frontier_tunes_every_kind_equally_then_fits_both_budgets(quick_runs: dict[str, Path]) -> None:
    doc = load(quick_runs["frontier-minilm"])
    levels = doc["settings"]["levels"]
    assert set(levels) == {"topk", "batchtopk", "relu_l1", "softsae", "vaease"}
    trials = rows(doc, "Tuning trials")
    for kind in levels:
        mine = [t for t in trials if t["kind"] == kind]
        assert len(mine) == len(doc["settings"]["lr_trials"]), "the same number of trials for every kind"
        assert sum(t["chosen"] for t in mine) == 1
        (best,) = [t for t in mine if t["chosen"]]
        assert doc["settings"]["lr_scale"][kind] == best["lr_scale"]
    frontier = rows(doc, "fvu–L0 frontier")
    budgets = list(doc["settings"]["plan"]["budgets"])
    assert budgets == ["small", "large"]
    expected = [(b, k, lv) for b in budgets for k, (_, lvs) in levels.items() for lv in lvs]
    assert [(r["budget"], r["kind"], r["level"]) for r in frontier] == expected
    for r in frontier:
        assert 0 <= mean(r, "dead_fraction") <= 1 and mean(r, "fvu") >= 0
        assert -1 <= mean(r, "cos_all") <= 1 and -1 <= mean(r, "cos_heldout") <= 1
        assert mean(r, "l0_p10") <= mean(r, "l0_p90")
    topk = [r for r in frontier if r["kind"] == "topk"]
    assert all(mean(r, "l0_mean") == r["level"] for r in topk), "TopK serves exactly k latents"
    compared = rows(doc, "Against TopK")
    assert {(r["budget"], r["kind"], r["level"]) for r in compared} == {e for e in expected if e[1] != "topk"}
    for r in compared:
        if r["topk_fvu"]["mean"] is not None:
            assert mean(r, "fvu_diff") == pytest.approx(mean(r, "fvu") - mean(r, "topk_fvu"), abs=1e-9)
    (floors,) = rows(doc, "Downstream floors")
    assert all(-1 <= mean(floors, k) <= 1 for k in floors)


def test_interpolation_in_log_l0_stays_inside_the_measured_levels() -> None:
    from sparsecodes.train.reproduce.frontier_minilm import interp_log_l0

    curve = [(8.0, 0.4), (32.0, 0.2)]
    assert interp_log_l0(curve, 16.0) == pytest.approx(0.3)  # halfway in log L0
    assert interp_log_l0(curve, 8.0) == pytest.approx(0.4)
    assert math.isnan(interp_log_l0(curve, 7.9)) and math.isnan(interp_log_l0(curve, 33.0))


def test_sosae_size_reports_cut_point_search_cost_and_memory(quick_runs: dict[str, Path]) -> None:
    doc = load(quick_runs["sosae-size"])
    (sosae,) = rows(doc, "SOSAE")
    assert 1 <= mean(sosae, "cut_point") <= doc["settings"]["d_sae"]
    assert mean(sosae, "enc_flops_truncated") <= mean(sosae, "enc_flops_full")
    assert 0 < mean(sosae, "peak_kib_truncated") <= mean(sosae, "peak_kib_full")
    search = {r["method"]: r for r in rows(doc, "Finding the size")}
    assert set(search) == {"grid", "random", "sosae"}
    assert mean(search["sosae"], "flops_ratio") == pytest.approx(1.0)
    assert mean(search["grid"], "candidates") == len(doc["settings"]["grid"])
    assert mean(search["grid"], "flops") > mean(search["sosae"], "flops"), "a search trains several models"
    sizes = [r["d_sae"] for r in rows(doc, "Plain autoencoders")]
    assert sizes == sorted(set(sizes)) and set(doc["settings"]["grid"]) <= set(sizes)


def test_sosae_denoise_has_both_models_for_every_noise_and_level(quick_runs: dict[str, Path]) -> None:
    doc = load(quick_runs["sosae-denoise"])
    levels = doc["settings"]["levels"]
    assert set(levels) == {"gaussian", "salt_pepper", "mask"}
    table = rows(doc, "Denoising")
    expected = [(n, lv, m) for n, lvs in levels.items() for lv in lvs for m in ("sosae", "dae")]
    assert [(r["noise"], r["level"], r["model"]) for r in table] == expected
    assert all(0 <= mean(r, "accuracy") <= 1 and mean(r, "mse_clean") > 0 for r in table)
    assert len(rows(doc, "SOSAE minus DAE")) == sum(map(len, levels.values()))


def test_all_writes_a_summary_of_the_verdicts(quick_runs: dict[str, Path]) -> None:
    summary_file = next(iter(quick_runs.values())).parent / "summary.json"
    verdicts = json.loads(summary_file.read_text())
    assert set(verdicts) == set(STUDIES) and set(verdicts.values()) <= set(VERDICTS)


# -- helpers and bad input ---------------------------------------------------------------------------


def test_summary_is_mean_and_sample_std_and_skips_undefined_values() -> None:
    s = summary([1.0, 2.0, 3.0])
    assert s["mean"] == pytest.approx(2.0) and s["std"] == pytest.approx(1.0) and s["n"] == 3
    assert summary([5.0])["std"] == 0.0
    s = summary([1.0, float("nan"), None])
    assert s["mean"] == 1.0 and s["n"] == 1 and s["values"] == [1.0, None, None]
    assert summary([float("nan")])["mean"] is None


def test_aggregate_groups_records_by_keys_in_first_seen_order() -> None:
    records = [{"kind": k, "seed": s, "fvu": f} for k, s, f in
               [("b", 0, 0.1), ("a", 0, 0.3), ("b", 1, 0.3), ("a", 1, 0.5)]]
    out = aggregate(records, ["kind"], ["fvu"])
    assert [r["kind"] for r in out] == ["b", "a"]
    assert out[0]["fvu"]["mean"] == pytest.approx(0.2) and out[1]["fvu"]["values"] == [0.3, 0.5]
    assert pm(out[0]["fvu"]) == "0.2 ± 0.14" and pm(summary([None])) == "n/a"


def test_unknown_study_and_bad_seeds_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "no-such-study", "--out", str(tmp_path / "x")]) == 2
    assert "unknown study 'no-such-study'" in capsys.readouterr().err
    assert main(["reproduce", "sosae-size", "--out", str(tmp_path / "x"), "--seeds", "0"]) == 2
    assert "--seeds must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_existing_output_folder_needs_force(quick_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = quick_runs["sosae-size"]
    before = (folder / "results.json").read_bytes()
    assert main(["reproduce", "sosae-size", "--out", str(folder), "--quick", "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (folder / "results.json").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows", "0", "--fit", "topk:16:3"], "--rows and --jobs must be >= 1"),
        (["--rows", "10", "--fit", "topk:16"], "KIND:LEVEL:LR_SCALE"),
        (["--rows", "10", "--fit", "nope:1:1"], "KIND one of topk"),
        (["--rows", "10", "--fit", "topk:abc:1"], "LEVEL must be a k value"),
        (["--rows", "10", "--fit", "topk:16:-1"], "LR_SCALE must be > 0"),
    ],
)
def test_frontier_follow_up_rejects_bad_arguments_before_fitting(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparsecodes.train.reproduce.frontier_minilm import follow_up

    with pytest.raises(SystemExit) as exit_:
        follow_up([*argv, "--out", str(tmp_path / "f.json")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_frontier_follow_up_needs_an_existing_output_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sparsecodes.train.reproduce.frontier_minilm import follow_up

    with pytest.raises(SystemExit):
        follow_up(["--rows", "10", "--fit", "topk:16:3", "--out", str(tmp_path / "no" / "f.json")])
    assert "does not exist" in capsys.readouterr().err

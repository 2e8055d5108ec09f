"""plot.py draws every figure, prints the table, marks degenerate runs and names what is missing."""

import contextlib
import io
import json

import matplotlib.image
import pytest

import fixtures_runs as F
import plot

FIGURES = ["sparse_probing.png", "absorption.png", "l0_vs_ev.png", "hierarchy.png", "weights.png",
           "training.png"]


def run_plot(monkeypatch, runs_dir, out_dir, labels):
    monkeypatch.setattr(plot, "labels", labels)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = plot.main([f"--out_dir={out_dir}", f"--runs_dir={runs_dir}"])
    return code, stdout.getvalue(), stderr.getvalue()


def table_rows(stdout):
    return {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("| run_")}


def assert_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image.std() > 0.05  # something is drawn


@pytest.fixture(scope="module")
def five_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    F.write_complete_run(root / "run_0", "baseline")
    F.write_partial_run(root / "run_1", "cosine_sparsity")
    F.write_complete_run(root / "run_2", "tuned_cosine", seed=1)
    F.write_degenerate_run(root / "run_3")
    F.write_legacy_run(root / "run_4")
    return root


@pytest.fixture(scope="module")
def all_runs_plotted(five_runs):
    with pytest.MonkeyPatch.context() as monkeypatch:
        return run_plot(monkeypatch, five_runs, five_runs / "plots", {})


def test_every_figure_is_written(five_runs, all_runs_plotted):
    code, stdout, _ = all_runs_plotted
    assert code == 0
    for name in FIGURES:
        assert_png(five_runs / "plots" / name)
        assert f"wrote {five_runs / 'plots' / name}" in stdout


def test_table_has_a_row_per_run_and_marks_degenerate_ones(all_runs_plotted):
    _, stdout, _ = all_runs_plotted
    rows = table_rows(stdout)
    assert sorted(rows) == ["run_0", "run_1", "run_2", "run_3", "run_4"]
    header = [c.strip() for c in next(l for l in stdout.splitlines() if l.startswith("| run |")).strip("|").split("|")]
    degenerate = {name: row[header.index("degenerate")] for name, row in rows.items()}
    assert degenerate == {"run_0": "no", "run_1": "no", "run_2": "no", "run_3": "**yes**", "run_4": "**yes**"}
    run_2 = dict(zip(header, rows["run_2"]))
    assert (run_2["variant"], run_2["EV"], run_2["L0 base"], run_2["L0 concept"]) == ("tuned_cosine", "0.924", "35.8", "9.7")
    assert (run_2["SAE top-1"], run_2["LLM top-1"], run_2["absorption"]) == ("0.731", "0.684", "0.128")
    assert run_2["NMI (null)"] == "0.118 (0.0040)"
    assert dict(zip(header, rows["run_1"]))["absorption"] == "n/a"
    assert dict(zip(header, rows["run_4"]))["steps"] == "0"
    assert "run_3 is degenerate: base L0 1536.4 exceeds n_base/2" in stdout
    assert "run_4 is degenerate: 0 training steps" in stdout


def test_missing_groups_and_files_are_reported(all_runs_plotted):
    _, stdout, _ = all_runs_plotted
    lacks = {line.split(" lacks: ")[0]: line for line in stdout.splitlines() if " lacks: " in line}
    assert "group absorption (failed: too few letters" in lacks["run_1"]
    assert "training: left out run_1: no training log (training_log.jsonl)" in stdout
    assert "absorption: left out run_1: no absorption results" in stdout
    assert "weights: left out run_4: no weight histograms (weights.json)" in stdout
    assert "run_4 lacks: config.json; run_status.json" in stdout
    assert "run_2 lacks" not in stdout


def test_every_run_is_drawn_and_labels_only_name_them(monkeypatch, five_runs, tmp_path):
    """A run with an entry in labels gets it; the others their variant's title (config.json), or
    'run_i (variant)' without one; a label with no run is reported, not fatal."""
    labels = {"run_0": "My baseline", "run_3": "Degenerate on purpose", "run_9": "Never ran"}
    code, stdout, _ = run_plot(monkeypatch, five_runs, tmp_path / "plots", labels)
    assert code == 0
    rows = table_rows(stdout)
    assert sorted(rows) == ["run_0", "run_1", "run_2", "run_3", "run_4"]
    shown = {name: row[1] for name, row in rows.items()}
    assert shown == {"run_0": "My baseline", "run_1": "Previous cosine variant",
                     "run_2": "Tuned cosine (this idea)", "run_3": "Degenerate on purpose",
                     "run_4": "run_4 (legacy AI-Scientist template)"}
    assert "run_9 ('Never ran' in labels): no run_9/final_info.json" in stdout
    assert_png(tmp_path / "plots" / "hierarchy.png")


def test_a_study_folder_is_drawn_with_the_top_level_baseline_and_frontier(monkeypatch, tmp_path):
    """python plot.py --runs_dir=study: study/run_* and the template's run_0 beside study/."""
    F.write_complete_run(tmp_path / "run_0", "baseline")
    F.write_complete_run(tmp_path / "run_7", "tuned_cosine")  # a loop run: not part of the study
    F.write_partial_run(tmp_path / "study" / "run_1", "cosine_sparsity")
    run = F.write_complete_run(tmp_path / "study" / "run_2", "tuned_cosine")
    config = json.loads((run / "config.json").read_text())
    (tmp_path / "run_0" / "frontier.json").write_text(json.dumps(F.frontier_for(config)))
    code, stdout, _ = run_plot(monkeypatch, tmp_path / "study", tmp_path / "study" / "plots",
                               {"run_0": "Baseline"})
    assert code == 0
    assert sorted(table_rows(stdout)) == ["run_0", "run_1", "run_2"]
    assert table_rows(stdout)["run_0"][1] == "Baseline"
    assert f"run_0: the baseline, from {tmp_path.resolve() / 'run_0'}" in stdout
    assert_png(tmp_path / "study" / "plots" / "frontier.png")


def test_legacy_run_alone_is_plotted_without_crashing(monkeypatch, tmp_path):
    F.write_legacy_run(tmp_path / "run_0")
    code, stdout, _ = run_plot(monkeypatch, tmp_path, tmp_path / "plots", {})
    assert code == 0
    assert_png(tmp_path / "plots" / "sparse_probing.png")
    assert not (tmp_path / "plots" / "absorption.png").exists()
    assert "absorption: no run has the data; no figure" in stdout
    assert table_rows(stdout)["run_0"][-1] == "**yes**"


def test_unreadable_final_info_and_malformed_histogram_are_reported(monkeypatch, tmp_path):
    F.write_complete_run(tmp_path / "run_0", "tuned_cosine")
    weights = json.loads((tmp_path / "run_0" / "weights.json").read_text())
    weights["levels"]["base"]["encoder_column_norm"]["histogram"]["counts"].pop()  # one count short
    (tmp_path / "run_0" / "weights.json").write_text(json.dumps(weights))
    (tmp_path / "run_1").mkdir()
    (tmp_path / "run_1" / "final_info.json").write_text('{"training": {"means": ')  # cut short
    code, stdout, _ = run_plot(monkeypatch, tmp_path, tmp_path / "plots", {})
    assert code == 0
    assert "run_1 lacks: final_info.json (unreadable)" in stdout
    assert "weights: left out run_0: histogram encoder_column_norm/base malformed" in stdout
    assert_png(tmp_path / "plots" / "weights.png")
    assert sorted(table_rows(stdout)) == ["run_0", "run_1"]


def test_no_runs_is_an_error_with_a_one_line_reason(monkeypatch, tmp_path):
    code, _, stderr = run_plot(monkeypatch, tmp_path, tmp_path / "plots", {})
    assert code == 1
    assert stderr.strip().splitlines()[-1].startswith("error: no run to plot: no run_*/final_info.json")


def test_weights_are_read_by_their_schema_and_a_file_that_does_not_fit_is_named(tmp_path, monkeypatch):
    F.write_complete_run(tmp_path / "run_0", "tuned_cosine")
    weights = json.loads((tmp_path / "run_0" / "weights.json").read_text())
    histograms = plot.weight_histograms(plot.WeightsOutput.model_validate(weights))
    assert sorted(histograms) == sorted(
        [(q, level) for q in ("encoder_column_norm", "decoder_row_norm") for level in ("base", "concept")]
        + [(f"w_enc2/{q}", "concept") for q in plot.W_ENC2_HISTOGRAMS])
    weights["levels"]["base"]["decoder_row_norm"]["histogram"]["edgez"] = [0, 1]  # not a field
    (tmp_path / "run_0" / "weights.json").write_text(json.dumps(weights))
    _, stdout, _ = run_plot(monkeypatch, tmp_path, tmp_path / "plots", {})
    assert "weights: left out run_0: weights.json does not fit its schema" in stdout


def test_training_panels_follow_what_the_log_holds(tmp_path, monkeypatch):
    F.write_complete_run(tmp_path / "run_0", "tuned_cosine")
    log = tmp_path / "run_0" / "training_log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    logs = {"run_0": rows}
    assert len(plot.training_panels(logs)) == len(plot.TRAINING_PANELS)
    for row in rows:  # an added loss term is drawn in a panel of its own, nothing is dropped
        row.update(aux_loss=0.1, sparsity_probe=-0.2)
    titles = [panel[0] for panel in plot.training_panels(logs)]
    assert titles[-2:] == ["aux loss", "sparsity probe"]
    log.write_text("".join(json.dumps(row) + "\n" for row in rows))
    _, stdout, _ = run_plot(monkeypatch, tmp_path, tmp_path / "plots", {})
    assert "training: wrote" in stdout


def test_the_table_names_the_precision_when_runs_differ_in_it(tmp_path, monkeypatch):
    F.write_complete_run(tmp_path / "run_0", "baseline")
    F.write_complete_run(tmp_path / "run_1", "tuned_cosine")
    _, same, _ = run_plot(monkeypatch, tmp_path, tmp_path / "plots", {})
    assert "precision" not in next(l for l in same.splitlines() if l.startswith("| run |"))
    config = json.loads((tmp_path / "run_1" / "config.json").read_text())
    config["precision"] = {"model_dtype": "float32", "sae_matmul_dtype": "float32"}
    (tmp_path / "run_1" / "config.json").write_text(json.dumps(config))
    _, differ, _ = run_plot(monkeypatch, tmp_path, tmp_path / "plots", {})
    header = [c.strip() for c in next(l for l in differ.splitlines() if l.startswith("| run |")).strip("|").split("|")]
    rows = table_rows(differ)
    assert dict(zip(header, rows["run_1"]))["precision"] == "model float32, SAE matmuls float32"
    assert dict(zip(header, rows["run_0"]))["precision"].startswith("model bfloat16")


def test_the_frontier_figure_and_the_equal_l0_columns(tmp_path, monkeypatch):
    """With run_0/frontier.json and a run's vs_baseline group: frontier.png and the difference
    columns, '~' within seed noise and 'out' outside a family's L0 range."""
    from sae_harness.records.frontier import compare_with_frontier

    F.write_complete_run(tmp_path / "run_0", "baseline")
    run = F.write_complete_run(tmp_path / "run_2", "tuned_cosine")
    config = json.loads((run / "config.json").read_text())
    points = [("relu", l0, {"explained_variance": ev, "absorption_fraction": 0.2, "sae_top_1": 0.7})
              for l0, ev in ((20.0, 0.85), (200.0, 0.95))]
    points.append(("topk", 300.0, {"explained_variance": 0.97}))
    frontier = F.frontier_for(config, points=points, spread={
        "max_std": {"absorption_fraction": 0.05},
        "families": {"tuned_cosine": {"explained_variance": {"mean": 0.9, "std": 0.01, "seeds": 3,
                                                             "values": [0.89, 0.9, 0.91]}}}})
    (tmp_path / "run_0" / "frontier.json").write_text(json.dumps(frontier))
    info = json.loads((run / "final_info.json").read_text())
    means, extra = compare_with_frontier(info, frontier)
    info["vs_baseline"] = {"means": means, **extra}
    (run / "final_info.json").write_text(json.dumps(info))
    _, stdout, _ = run_plot(monkeypatch, tmp_path, tmp_path / "plots", {})
    assert "frontier: wrote" in stdout
    assert_png(tmp_path / "plots" / "frontier.png")
    header = [c.strip() for c in next(l for l in stdout.splitlines() if l.startswith("| run |")).strip("|").split("|")]
    row = dict(zip(header, table_rows(stdout)["run_2"]))
    ev_cell = row["dEV vs relu/topk/matryoshka at equal L0"]
    assert ev_cell == f"{means['relu.explained_variance.difference']:+.3f} / out / n/a"
    assert row["d absorption vs relu/topk/matryoshka at equal L0"].split(" / ")[0].endswith("~")
    assert dict(zip(header, table_rows(stdout)["run_0"]))["d top-1 vs relu/topk/matryoshka at equal L0"] == "n/a"


def test_the_overrides_that_tell_runs_apart_are_part_of_their_labels(tmp_path):
    """Arms a script trained with overrides (hierarchy_ablation.py: one variant at two lrs and
    seeds) are told apart by the overridden values that differ between the runs of the variant
    (read from config.json); values they share (a test fixture's sizes) are left out, and so are
    a lone run's."""
    from fixtures_runs import config_json

    shared = "n_base 16384 -> 256 (overrides)"
    for name, changes in (("run_1", [shared]),
                          ("run_2", [shared, "lr 0.001 -> 0.0003 (overrides)", "seed 0 -> 1 (overrides)"])):
        (tmp_path / name).mkdir()
        config = config_json("tuned_cosine")
        config["changed_from_experiment_py"] = ["batch_size 2048 -> 512 (embedded setting /4)", *changes]
        (tmp_path / name / "config.json").write_text(json.dumps(config))
        (tmp_path / name / "final_info.json").write_text(
            json.dumps({"training": {"means": {"explained_variance": 0.8}}}))
    (tmp_path / "run_3").mkdir()  # another variant, alone: its title only
    config = config_json("cosine_sparsity")
    config["changed_from_experiment_py"] = [shared, "lr 0.001 -> 0.002 (overrides)"]
    (tmp_path / "run_3" / "config.json").write_text(json.dumps(config))
    (tmp_path / "run_3" / "final_info.json").write_text(json.dumps({"training": {"means": {}}}))
    runs = plot.find_runs(tmp_path, {})
    assert [run.label for run in runs] == ["Tuned cosine (this idea)",
                                           "Tuned cosine (this idea) [lr 0.0003, seed 1]",
                                           "Previous cosine variant"]
    assert [run.label for run in plot.find_runs(tmp_path, {"run_2": "mine"})][1] == "mine"

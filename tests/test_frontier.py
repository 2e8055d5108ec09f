"""The baseline frontier: interpolation at equal L0, its key, seed noise, SAE-Lens' trainer."""

import json
import math
import tempfile
from pathlib import Path

import pytest
import torch

import fixtures_runs as F
from sae_harness.run.experiment_run import ExperimentRun
from sae_harness.records.frontier import (SAELensView, compare_with_frontier, frontier_path,
                                          interpolate_at_l0, read_frontier, seed_spread,
                                          train_sae_lens)
from sae_harness.evals.heldout import heldout_statistics
from sae_harness.records.run_directory import RunDirectory


def test_interpolation_is_linear_in_log_l0_and_never_extrapolates():
    curve = [(10.0, 0.8), (100.0, 0.9), (40.0, 0.86)]
    assert interpolate_at_l0(curve, 10.0) == pytest.approx(0.8)
    assert interpolate_at_l0(curve, 20.0) == pytest.approx(0.8 + 0.06 * math.log(2) / math.log(4))
    assert interpolate_at_l0(curve, 100.0) == pytest.approx(0.9)
    assert interpolate_at_l0(curve, 9.9) is None and interpolate_at_l0(curve, 101.0) is None
    assert interpolate_at_l0([], 5.0) is None


def test_a_run_reads_its_numbers_against_the_frontier_at_its_own_l0(tmp_path):
    run = F.write_complete_run(tmp_path / "run_2", "tuned_cosine")
    info = json.loads((run / "final_info.json").read_text())
    config = json.loads((run / "config.json").read_text())
    l0 = info["training"]["means"]["l0_total"]
    ev = info["training"]["means"]["explained_variance"]
    top1 = info["sparse_probing"]["means"]["sae_top_1_test_accuracy"]
    means, extra = compare_with_frontier(info, F.frontier_for(config))
    expected = interpolate_at_l0([(20.0, 0.80), (80.0, 0.90), (200.0, 0.95)], l0)
    assert means["l0_total"] == l0
    assert means["relu.explained_variance.frontier"] == pytest.approx(expected)
    assert means["relu.explained_variance.difference"] == pytest.approx(ev - expected)
    assert means["relu.sae_top_1.difference"] == pytest.approx(top1 - 0.6)
    # topk's single point at L0 5 does not reach this run: said, not extrapolated
    assert not any(name.startswith("topk.") for name in means)
    assert "outside topk's L0 range [5.0, 5.0]" in extra["out_of_range"]["topk"]
    # noise marks: |difference| < 2 x the larger seed std
    noisy = compare_with_frontier(info, F.frontier_for(config, {"max_std": {
        "explained_variance": abs(ev - expected), "sae_top_1": 0.001}}))[1]
    assert noisy["within_seed_noise"] == ["relu.explained_variance"]


def test_a_study_run_finds_the_top_level_frontier_and_a_loop_run_the_one_beside_it(tmp_path):
    """study/run_2 has no run_0 beside it: it reads the template's run_0/frontier.json; a run of
    the loop's folder (or of any folder holding a run_0) reads the run_0 beside it."""
    study_run = F.write_complete_run(tmp_path / "study" / "run_2", "tuned_cosine")
    loop_run = F.write_complete_run(tmp_path / "run_2", "tuned_cosine")
    assert frontier_path(study_run) == tmp_path / "study" / "run_0" / "frontier.json"  # no run_0 yet
    (tmp_path / "run_0").mkdir()
    assert frontier_path(study_run) == tmp_path.resolve() / "run_0" / "frontier.json"
    assert frontier_path(loop_run) == tmp_path / "run_0" / "frontier.json"
    (tmp_path / "study" / "run_0").mkdir()
    assert frontier_path(study_run) == tmp_path / "study" / "run_0" / "frontier.json"
    config = json.loads((study_run / "config.json").read_text())
    (tmp_path / "run_0" / "frontier.json").write_text(json.dumps(F.frontier_for(config)))
    (tmp_path / "study" / "run_0").rmdir()
    assert read_frontier(study_run, config)[0] is not None


def test_the_frontier_is_read_only_for_its_own_setting(tmp_path):
    run = F.write_complete_run(tmp_path / "run_2", "tuned_cosine")
    config = json.loads((run / "config.json").read_text())
    frontier, why = read_frontier(run, config)
    assert frontier is None and "no baseline frontier" in why and "build_frontier.py" in why
    (tmp_path / "run_0").mkdir()
    (tmp_path / "run_0" / "frontier.json").write_text(json.dumps(F.frontier_for(config)))
    frontier, why = read_frontier(run, config)
    assert frontier is not None and why == ""
    other = json.loads(json.dumps(config))
    other["config"]["training_tokens"] = 1_000_000
    frontier, why = read_frontier(run, other)
    assert frontier is None and "differs in training_tokens" in why
    broken = F.frontier_for(config)
    del broken["points"][0]["l0_total"]  # a file that does not fit its schema is not read
    (tmp_path / "run_0" / "frontier.json").write_text(json.dumps(broken))
    frontier, why = read_frontier(run, config)
    assert frontier is None and "does not fit its schema" in why and "l0_total" in why


def test_a_frontier_and_the_vs_baseline_group_it_gives_fit_their_schemas(tmp_path):
    from sae_harness.records.frontier import compare_with_frontier
    from sae_harness.records.schemas import FrontierOutput, VsBaselineExtra
    run = F.write_complete_run(tmp_path / "run_2", "tuned_cosine")
    config = json.loads((run / "config.json").read_text())
    frontier = F.frontier_for(config)
    assert {p.family for p in FrontierOutput.model_validate(frontier).points} >= {"relu", "topk"}
    means, extra = compare_with_frontier(json.loads((run / "final_info.json").read_text()), frontier)
    VsBaselineExtra.model_validate(extra)
    assert any(name.endswith(".difference") for name in means)


def test_the_run_records_vs_baseline_or_says_how_to_make_the_frontier(tmp_path, capsys):
    run = F.write_complete_run(tmp_path / "run_2", "tuned_cosine")
    config = json.loads((run / "config.json").read_text())
    experiment_run = ExperimentRun.__new__(ExperimentRun)
    experiment_run.directory = RunDirectory(run)
    experiment_run._compare_with_frontier()
    status = json.loads((run / "run_status.json").read_text())
    assert "build_frontier.py" in status["skipped"]["vs_baseline"]
    assert "[vs_baseline] skipped" in capsys.readouterr().out
    (tmp_path / "run_0").mkdir()
    (tmp_path / "run_0" / "frontier.json").write_text(json.dumps(F.frontier_for(config)))
    experiment_run._compare_with_frontier()
    info = json.loads((run / "final_info.json").read_text())
    assert "relu.explained_variance.difference" in info["vs_baseline"]["means"]
    assert "vs_baseline" not in json.loads((run / "run_status.json").read_text()).get("skipped", {})
    assert "vs relu: explained_variance" in capsys.readouterr().out


def test_seed_spread_is_the_sample_std_and_the_larger_family_sets_the_noise():
    spread = seed_spread({"baseline": [{"explained_variance": v} for v in (0.80, 0.82, 0.84)],
                          "tuned": [{"explained_variance": v} for v in (0.85, 0.85, 0.85)]})
    assert spread["families"]["baseline"]["explained_variance"]["std"] == pytest.approx(0.02)
    assert spread["max_std"]["explained_variance"] == pytest.approx(0.02)


@pytest.mark.parametrize("family", ["topk", "matryoshka"])
def test_sae_lens_trains_on_our_batches_and_is_seen_as_our_evals_see_an_sae(family):
    torch.manual_seed(0)
    directions = torch.randn(64, 16)
    codes = (torch.rand(6000, 64) < 0.05).float() * torch.rand(6000, 64)
    x = codes @ directions
    batches = (x[(i * 128) % 5000:][:128] for i in range(10_000))
    with tempfile.TemporaryDirectory() as work:
        sae = train_sae_lens(family, 4, 16, 64, batches, 150, 128, 1e-3, 0, Path(work),
                             [16, 64] if family == "matryoshka" else None)
    view = SAELensView(sae, "tiny", 1, 32, family, (16, 64) if family == "matryoshka" else ())
    heldout = x[5000:]
    if family == "matryoshka":  # its first group alone: the absorption eval's per-group view
        (name, first), = view.level_views()
        z, z_first = view.encode(heldout[:200]), first.encode(heldout[:200])
        assert name == "first_16_only" and view.kept_latents is None
        assert torch.equal(z_first[:, :16], z[:, :16]) and not z_first[:, 16:].any()
        assert z[:, 16:].any()  # the later groups did fire
    else:
        assert view.level_views() == []
    stats = heldout_statistics(view, heldout)
    assert stats["explained_variance"] > 0.3  # it learned from the batches it was fed
    z = view.encode(heldout[:10])
    assert z.shape == (10, 64) and torch.equal(view.decode(z), sae.decode(z))
    assert view.cfg.d_sae == 64 and view.W_dec.shape == (64, 16)
    if family == "topk":
        assert stats["l0_total"] == 4.0
    # the evals cast the SAE to the model's dtype (absorption does): SAE-Lens' own encode must
    # then take inputs of that dtype (nn.Module.to alone left its dtype attribute at float32)
    cast = view.to(device="cpu", dtype=torch.bfloat16)
    assert cast.encode(heldout[:10].bfloat16()).dtype == torch.bfloat16
    assert cast.W_dec.dtype == torch.bfloat16 and cast.cfg.dtype == "bfloat16"


def test_the_notebook_reads_each_run_against_the_frontier_with_its_noise_marks(tmp_path):
    from sae_harness.records.notes import notes_section

    run = F.write_complete_run(tmp_path / "run_2", "tuned_cosine")
    assert "Against the baseline" not in notes_section(run)  # no frontier yet: no line
    config = json.loads((run / "config.json").read_text())
    info = json.loads((run / "final_info.json").read_text())
    means, extra = compare_with_frontier(info, F.frontier_for(config, {"max_std": {"explained_variance": 1.0}}))
    info["vs_baseline"] = {"means": means, **extra}
    (run / "final_info.json").write_text(json.dumps(info))
    line = next(l for l in notes_section(run).splitlines() if l.startswith("Against the baseline"))
    ev = means["relu.explained_variance.difference"]
    assert f"relu: explained_variance {ev:+.3f}~" in line  # within 2 x a seed std of 1.0
    top1 = f"sae_top_1 {means['relu.sae_top_1.difference']:+.3f}"
    assert top1 in line and top1 + "~" not in line  # its spread is unknown: no mark
    assert "topk out of range" in line

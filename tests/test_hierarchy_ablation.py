"""scripts/hierarchy_ablation.py: its table is read off the arms' own records, and --table-only
trains nothing (an arm that is not finished, or finished with another configuration, is left out)."""

import json
from dataclasses import asdict



def test_the_table_reads_each_finished_arm_and_leaves_the_rest_out(tmp_path, monkeypatch, capsys):
    import hierarchy_ablation as H

    from sae_harness.records.run_directory import json_round_trip

    monkeypatch.setattr(H, "FOLDER", tmp_path)
    monkeypatch.setattr(H, "ARMS", [("run_1", "tuned_cosine", {}), ("run_2", "topk_base", {"lr": 3e-4})])
    monkeypatch.setattr(H, "SEED_ARMS", [])
    monkeypatch.setenv("EXPERIMENT_PRESET", "embedded")
    env = H.read_run_environment()
    groups = {group: {"means": {}} for group in ("training", *H.EVALUATIONS)}
    groups["absorption"]["means"] = {"mean_absorption_fraction_score": 0.25,
                                     "base_only_mean_absorption_fraction_score": 0.2}
    groups["core"]["means"] = {"ce_loss_score": 0.75, "ce_loss_score_fp32": 0.7512}
    groups["vs_baseline"] = {"means": {"matryoshka.absorption_fraction.frontier": 0.07}}
    for name, variant, overrides in H.ARMS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "final_info.json").write_text(json.dumps(groups))
        cfg = H.E.make_config(variant, env.preset.name, env.training_tokens, overrides)
        (tmp_path / name / "config.json").write_text(json.dumps(
            {"config": json_round_trip(asdict(cfg)), "provenance": {"device": "cpu: test machine"}}))
    # run_2 was trained at another lr than its arm asks: not this arm, left out
    config = json.loads((tmp_path / "run_2" / "config.json").read_text())
    config["config"]["lr"] = 1e-3
    (tmp_path / "run_2" / "config.json").write_text(json.dumps(config))

    assert H.main(["--table-only"]) == 0
    out = capsys.readouterr().out
    assert "run_2: topk_base {'lr': 0.0003} not finished; left out" in out
    table = json.loads((tmp_path / "ablation.json").read_text())
    assert [row["run"] for row in table["arms"]] == ["run_1"]
    row = table["arms"][0]
    assert (row["absorption"], row["abs. base only"], row["Matryoshka abs. at L0"]) == (0.25, 0.2, 0.07)
    assert row["CE score fp32"] == 0.7512 and row["concepts alive"] is None and row["lr"] == 1e-3
    assert "| run_1 | tuned_cosine | 0.001 | 0 | 0.250 |" in (tmp_path / "ablation.md").read_text()
    assert table["machine"] == "cpu: test machine"


def test_the_second_budget_needs_its_token_budget_and_tables_its_arms_in_its_own_folder(
        tmp_path, monkeypatch, capsys):
    import hierarchy_ablation as H
    import pytest

    from sae_harness.records.run_directory import json_round_trip

    monkeypatch.setattr(H, "FOLDER", tmp_path)
    monkeypatch.setenv("EXPERIMENT_PRESET", "embedded")
    monkeypatch.delenv("EXPERIMENT_TOKENS", raising=False)
    with pytest.raises(SystemExit, match="needs EXPERIMENT_TOKENS"):
        H.main(["--second-budget", "--table-only"])
    monkeypatch.setenv("EXPERIMENT_TOKENS", "2000000")
    env = H.read_run_environment()
    folder = tmp_path / "tokens_2000000"
    name, variant, overrides = H.SECOND_BUDGET_ARMS[0]
    cfg = H.E.make_config(variant, env.preset.name, env.training_tokens, overrides)
    assert cfg.training_tokens == 2_000_000
    (folder / name).mkdir(parents=True)
    groups = {group: {"means": {}} for group in ("training", *H.EVALUATIONS)}
    groups["absorption"]["means"] = {"mean_absorption_fraction_score": 0.03}
    (folder / name / "final_info.json").write_text(json.dumps(groups))
    (folder / name / "config.json").write_text(json.dumps(
        {"config": json_round_trip(asdict(cfg)), "provenance": {"device": "cpu: test machine"}}))
    point = folder / "run_0" / "frontier" / "matryoshka_k20"
    point.mkdir(parents=True)
    (point / "final_info.json").write_text(json.dumps(
        {"training": {"means": {"l0_total": 19.5, "explained_variance": 0.7}},
         "absorption": {"means": {"mean_absorption_fraction_score": 0.01,
                                  "first_128_only_mean_absorption_fraction_score": 0.0}}}))

    assert H.main(["--second-budget", "--table-only"]) == 0
    table = json.loads((folder / "ablation.json").read_text())
    assert [row["run"] for row in table["arms"]] == [name]  # the unfinished arms are left out
    assert table["arms"][0]["absorption"] == 0.03 and "2,000,000 training tokens" in table["setting"]
    assert table["matryoshka_by_group"]["k20"]["first_128_only_mean_absorption_fraction_score"] == 0.0
    assert "| k20 | 19.500 | 0.700 | 0.010 | 0.000 | – |" in (folder / "ablation.md").read_text()

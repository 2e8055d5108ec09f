"""Degenerate SAEs are recognised (DESIGN 7) in our final_info shape and in the seeded legacy one."""

import copy
import json

import pytest

import fixtures_runs as F
from sae_harness.records.degeneracy import (CHANCE_TOLERANCE, check_degeneracy, degeneracy_reasons,
                                            group_means, is_legacy_final_info)


@pytest.fixture
def healthy(tmp_path):
    run = F.write_complete_run(tmp_path / "run_2", "tuned_cosine")
    return json.loads((run / "final_info.json").read_text()), json.loads((run / "config.json").read_text())


def with_means(info, group, **values):
    info = copy.deepcopy(info)
    info.setdefault(group, {"means": {}})["means"].update(values)
    return info


def test_healthy_run_has_no_reasons_and_every_check_was_made(healthy):
    info, config = healthy
    assert degeneracy_reasons(info, config) == []
    assert check_degeneracy(info, config).unchecked == []


def test_zero_training_steps(healthy):
    info, config = healthy
    reasons = degeneracy_reasons(with_means(info, "training", steps=0.0), config)
    assert reasons == ["0 training steps"]


def test_base_l0_of_zero(healthy):
    info, config = healthy
    reasons = degeneracy_reasons(with_means(info, "training", l0_base=0.0), config)
    assert len(reasons) == 1 and "base L0 is 0" in reasons[0]


def test_base_l0_above_half_the_base_width_from_config(healthy):
    info, config = healthy  # n_base = 2048
    assert degeneracy_reasons(with_means(info, "training", l0_base=1024.0), config) == []
    reasons = degeneracy_reasons(with_means(info, "training", l0_base=1025.0), config)
    assert len(reasons) == 1 and "exceeds n_base/2 = 1024" in reasons[0]
    # a narrower SAE flags the same L0
    narrow = copy.deepcopy(config)
    narrow["config"]["n_base"] = 512
    assert degeneracy_reasons(with_means(info, "training", l0_base=300.0), narrow)


def test_base_width_unknown_is_said_not_guessed(healthy):
    info, _ = healthy
    check = check_degeneracy(with_means(info, "training", l0_base=1900.0), None)
    assert check.reasons == []
    assert any("the base width (config n_base) unknown" in line for line in check.unchecked)


@pytest.mark.parametrize("group,where", [("training", "held-out tokens"), ("core", "SAE-Bench core")])
def test_negative_explained_variance(healthy, group, where):
    info, config = healthy
    reasons = degeneracy_reasons(with_means(info, group, explained_variance=-0.02), config)
    assert reasons == [f"explained variance -0.020 < 0 on {where}"]


def test_all_probes_at_chance(healthy):
    info, config = healthy
    # the tolerance is 0.02 (CHANCE_TOLERANCE): 0.485 and 0.515 are chance, 0.53 is not
    chance = {k: 0.5 + 0.015 * (-1) ** i
              for i, k in enumerate(info["sparse_probing"]["means"]) if k.startswith("sae_")}
    reasons = degeneracy_reasons(with_means(info, "sparse_probing", **chance), config)
    assert len(reasons) == 1 and reasons[0].startswith("all SAE probes at chance")
    assert f"within {CHANCE_TOLERANCE} of 0.5" in reasons[0]
    # one probe above chance (here top-50) means the latents carry information
    one_works = dict(chance, sae_top_50_test_accuracy=0.53)
    assert degeneracy_reasons(with_means(info, "sparse_probing", **one_works), config) == []


def test_llm_accuracies_do_not_count_as_sae_probes(healthy):
    info, config = healthy
    llm_at_chance = {k: 0.5 for k in info["sparse_probing"]["means"] if k.startswith("llm_")}
    assert degeneracy_reasons(with_means(info, "sparse_probing", **llm_at_chance), config) == []


def test_missing_groups_are_unchecked_not_degenerate(healthy):
    info, config = healthy
    only_training = {"training": info["training"]}
    check = check_degeneracy(only_training, config)
    assert check.reasons == []
    assert any("probe" in line for line in check.unchecked)


def test_vanilla_sae_without_training_group_uses_core_l0(tmp_path):
    run = F.write_complete_run(tmp_path / "run_0", "baseline")
    info = json.loads((run / "final_info.json").read_text())
    config = json.loads((run / "config.json").read_text())
    del info["training"]
    info["core"]["means"]["l0"] = 1500.0
    reasons = degeneracy_reasons(info, config)
    assert len(reasons) == 1 and "SAE-Bench core" in reasons[0] and "1500.0 exceeds" in reasons[0]


def test_non_finite_and_non_numeric_means_are_ignored(healthy):
    info, config = healthy
    broken = with_means(info, "training", explained_variance=float("nan"), l0_base="many")
    assert degeneracy_reasons(broken, config) == []


def test_degenerate_fixture_run_has_all_three_reasons(tmp_path):
    run = F.write_degenerate_run(tmp_path / "run_3")
    info = json.loads((run / "final_info.json").read_text())
    config = json.loads((run / "config.json").read_text())
    reasons = degeneracy_reasons(info, config)
    assert [r.split(" ")[0] for r in reasons] == ["base", "explained", "all"]


# --- the seeded legacy format ---------------------------------------------------------------
def test_legacy_flat_dict_is_recognised_and_flagged():
    info = F.LEGACY_FINAL_INFO
    assert is_legacy_final_info(info)
    reasons = degeneracy_reasons(info, None)
    assert reasons[0].startswith("0 training steps (legacy AI-Scientist template result")
    assert "final_loss = null" in reasons[0]
    assert any(r.startswith("all SAE probes at chance") for r in reasons)
    assert any("layer 19" in r and "hook_layer 5" in r for r in reasons)
    assert len(reasons) == 3


def test_legacy_layer_mismatch_read_from_hook_name_when_hook_layer_is_absent():
    info = copy.deepcopy(F.LEGACY_FINAL_INFO)
    del info["sae_cfg_dict"]["hook_layer"]
    assert any("hook_layer 5" in r for r in degeneracy_reasons(info, None))
    info["layer"] = 5
    assert not any("hook_layer" in r for r in degeneracy_reasons(info, None))


def test_legacy_template_keys_alone():
    info = {"training_steps": 0, "final_loss": None, "layer": 19, "dict_size": 2304,
            "learning_rate": 0.0003, "sparsity_penalty": 0.04}
    assert is_legacy_final_info(info)
    assert degeneracy_reasons(info, None) == [
        "0 training steps (legacy AI-Scientist template result: training_steps = 0, final_loss = null)"]


def test_legacy_sae_bench_metrics_become_groups():
    means = group_means(F.LEGACY_FINAL_INFO)
    assert means["training"] == {"steps": 0.0}
    assert means["sparse_probing"]["sae_top_1_test_accuracy"] == 0.5
    assert means["sparse_probing"]["llm_top_1_test_accuracy"] == 0.6843
    # configuration blocks are not results: d_sae and hook_layer do not leak into any group
    assert all("d_sae" not in g and "hook_layer" not in g for g in means.values())


def test_our_format_is_not_legacy(healthy):
    info, _ = healthy
    assert not is_legacy_final_info(info)
    assert set(group_means(info)) == {"training", "core", "sparse_probing", "absorption", "weights", "hierarchy"}


def test_core_explained_variance_is_judged_by_its_centred_figure(healthy):
    """SAE-Bench 0.6.0's own core EV can sit near 1 for any SAE; the centred one decides."""
    info, config = healthy
    bad = with_means(info, "core", explained_variance=1.0006, explained_variance_centered=-0.2)
    assert "explained variance -0.200 < 0 on SAE-Bench core" in degeneracy_reasons(bad, config)
    good = with_means(info, "core", explained_variance=-3.0, explained_variance_centered=0.8)
    assert not any("SAE-Bench core" in r for r in degeneracy_reasons(good, config))


def test_the_seeded_record_is_flagged_degenerate():
    """The flat AI-Scientist record the project was seeded with (run_0/final_info_as_seeded.json's
    shape and failure: 0 steps, the wrong layer, every probe at chance), from the fixture."""
    seeded = json.loads(json.dumps(F.LEGACY_FINAL_INFO))
    assert is_legacy_final_info(seeded)
    reasons = degeneracy_reasons(seeded, None)
    assert reasons[0].startswith("0 training steps (legacy AI-Scientist template result")
    assert any(r.startswith("all SAE probes at chance") for r in reasons)
    assert any("trained on layer 19" in r and "hook_layer 5" in r for r in reasons)


def test_a_dead_concept_level_has_its_own_reason(healthy, tmp_path):
    """The committed as-written runs' failure: the SAE trains, but its concept level is dead."""
    info, config = healthy
    assert degeneracy_reasons(with_means(info, "training", dead_fraction_concept=0.94), config) == []
    reasons = degeneracy_reasons(with_means(info, "training", dead_fraction_concept=0.996), config)
    assert reasons == ["concept level (nearly) entirely dead: 99.6% of its latents never fire on "
                       "held-out tokens"]
    # a vanilla SAE has no concept level to be dead
    run = F.write_complete_run(tmp_path / "run_0", "baseline")
    info = json.loads((run / "final_info.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert degeneracy_reasons(with_means(info, "training", dead_fraction_concept=1.0), config) == []

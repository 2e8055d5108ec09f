"""notes.txt: one section per run, in run order, replaced on re-run, other text left alone."""

import json
import re

import pytest

import fixtures_runs as F
from sae_harness.notes import DEFAULT_HEADER, notes_section, update_notes


@pytest.fixture
def runs(tmp_path):
    return {
        "run_0": F.write_complete_run(tmp_path / "run_0", "baseline"),
        "run_1": F.write_partial_run(tmp_path / "run_1", "cosine_sparsity"),
        "run_2": F.write_complete_run(tmp_path / "run_2", "tuned_cosine"),
        "run_3": F.write_degenerate_run(tmp_path / "run_3"),
    }


def headers(text):
    return re.findall(r"^## Run (\S+):", text, flags=re.M)


def test_new_notebook_starts_with_title_and_description(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    section = update_notes(notes, runs["run_0"])
    text = notes.read_text()
    assert text.startswith("# Title: ") and text.splitlines()[1].startswith("# Experiment description: ")
    assert text == DEFAULT_HEADER + section
    assert section.startswith("## Run 0: Baseline (vanilla ReLU SAE) [baseline]\nResults: {")


def test_results_hold_the_key_numbers(tmp_path, runs):
    section = update_notes(tmp_path / "notes.txt", runs["run_2"])
    results = json.loads(re.search(r"^Results: (.*)$", section, flags=re.M).group(1))
    assert results["variant"] == "tuned_cosine"
    assert results["explained_variance"] == 0.924
    assert results["l0_base"] == 35.8 and results["l0_concept"] == 9.7
    assert results["sae_top_1_test_accuracy"] == 0.731
    assert results["llm_top_1_test_accuracy"] == 0.684
    assert results["mean_absorption_fraction_score"] == 0.128
    assert (results["mi_mean"], results["null_mi_mean"]) == (0.0412, 0.0011)
    assert results["degenerate"] is False


def test_sections_are_appended_in_run_order(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    for name in ("run_2", "run_0", "run_3", "run_1"):
        update_notes(notes, runs[name])
    assert headers(notes.read_text()) == ["0", "1", "2", "3"]


def test_rerun_replaces_its_section(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    for name in ("run_0", "run_1", "run_2"):
        update_notes(notes, runs[name])
    info_path = runs["run_1"] / "final_info.json"
    info = json.loads(info_path.read_text())
    info["training"]["means"]["explained_variance"] = 0.777
    info_path.write_text(json.dumps(info))
    update_notes(notes, runs["run_1"])
    text = notes.read_text()
    assert headers(text) == ["0", "1", "2"]
    assert '"explained_variance": 0.777' in text and '"explained_variance": 0.912' not in text


def test_foreign_text_is_preserved_byte_for_byte(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    own_header = "# Title: My own title\n# Experiment description: written by hand.\n\n"
    remark = "Researcher: run 0's dead fraction looks low -- check the window.\n  indented, odd spacing  \n\n"
    trailer = "Plan: try k = 8 next.\nno newline at the end"
    s0, s2_old = notes_section(runs["run_0"]), notes_section(runs["run_2"])
    notes.write_text(own_header + s0 + "\n" + remark + s2_old + "\n" + trailer)
    # change run_2 so its section must change, then add run_1 and rewrite run_2
    info_path = runs["run_2"] / "final_info.json"
    info = json.loads(info_path.read_text())
    info["sparse_probing"]["means"]["sae_top_1_test_accuracy"] = 0.742
    info_path.write_text(json.dumps(info))
    s1 = update_notes(notes, runs["run_1"])
    s2 = update_notes(notes, runs["run_2"])
    assert s2 != s2_old
    assert notes.read_text() == own_header + s0 + "\n" + remark + s1 + "\n" + s2 + "\n" + trailer


def test_hand_written_lines_after_a_blank_line_are_not_part_of_a_section(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    update_notes(notes, runs["run_0"])
    with open(notes, "a") as handle:
        handle.write("\nMy remark on run 0.\n")
    update_notes(notes, runs["run_0"])
    assert notes.read_text().endswith("\nMy remark on run 0.\n")
    assert headers(notes.read_text()) == ["0"]


def test_degenerate_run_gets_a_warning_line(tmp_path, runs):
    section = update_notes(tmp_path / "notes.txt", runs["run_3"])
    warning = [line for line in section.splitlines() if line.startswith("WARNING: degenerate SAE: ")]
    assert len(warning) == 1
    assert "exceeds n1/2" in warning[0] and "explained variance -0.083" in warning[0]
    assert "at chance" in warning[0]
    assert '"degenerate": true' in section
    assert "WARNING" not in update_notes(tmp_path / "notes.txt", runs["run_2"])


def test_legacy_seeded_run_is_described_and_flagged(tmp_path):
    run = F.write_legacy_run(tmp_path / "run_0")
    section = update_notes(tmp_path / "notes.txt", run)
    assert section.startswith("## Run 0: Seeded baseline [legacy AI-Scientist template result]")
    assert "training_steps 0" in section and "layer 19" in section
    assert "WARNING: degenerate SAE: 0 training steps" in section
    assert "hook_layer 5" in section


def test_failed_evals_and_config_changes_are_described(tmp_path, runs):
    s1 = update_notes(tmp_path / "notes.txt", runs["run_1"])
    assert "Failed evaluations: absorption: too few letters" in s1
    assert "Changes from run_0: variant \"baseline\" -> \"cosine_sparsity\"; " in s1
    s2 = update_notes(tmp_path / "notes.txt", runs["run_2"])
    assert "concept_k 12 -> 10" in s2 and "lr_schedule \"cosine\" -> \"cosine_restarts\"" in s2
    assert "Failed evaluations" not in s2


def test_run_without_a_number_goes_last_under_its_name(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    local = F.write_complete_run(tmp_path / "run_local", "baseline")
    update_notes(notes, local)
    update_notes(notes, runs["run_3"])
    update_notes(notes, local)
    text = notes.read_text()
    assert headers(text) == ["3", "run_local"]
    assert "## Run run_local: run_local [baseline]" in text


def test_no_temporary_files_are_left(tmp_path, runs):
    update_notes(tmp_path / "notes.txt", runs["run_0"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["notes.txt"]

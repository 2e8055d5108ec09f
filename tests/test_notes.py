"""notes.txt: the harness writes one block per run and replaces only that block when the run is run
again; every byte outside harness blocks (the title, the coder's own notes) is left as it was."""

import json
import re

import pytest

import fixtures_runs as F
from sae_harness.records.notes import DEFAULT_HEADER, main, notes_section, text_outside_blocks, update_notes


@pytest.fixture
def runs(tmp_path):
    return {
        "run_0": F.write_complete_run(tmp_path / "run_0", "baseline"),
        "run_1": F.write_partial_run(tmp_path / "run_1", "cosine_sparsity"),
        "run_2": F.write_complete_run(tmp_path / "run_2", "tuned_cosine"),
        "run_3": F.write_degenerate_run(tmp_path / "run_3"),
    }


def blocks(text):
    """The run folder names of the harness blocks, in file order."""
    return re.findall(r"^--- harness block (\S+) begin ", text, flags=re.M)


def with_explained_variance(run, value):
    """Change a run's recorded explained variance, so that its block must change."""
    info_path = run / "final_info.json"
    info = json.loads(info_path.read_text())
    info["training"]["means"]["explained_variance"] = value
    info_path.write_text(json.dumps(info))


def test_new_notebook_starts_with_title_and_description(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    block = update_notes(notes, runs["run_0"])
    text = notes.read_text()
    assert text.startswith("# Title: ") and text.splitlines()[1].startswith("# Experiment description: ")
    assert text == DEFAULT_HEADER + block
    lines = block.splitlines()
    assert lines[0].startswith("--- harness block run_0 begin (written by the harness; replaced when "
                               "run_0 is run again")
    assert lines[1] == "Run 0: Baseline (vanilla ReLU SAE) [baseline]"
    assert lines[2].startswith("Results: {") and lines[-1] == "--- harness block run_0 end ---"


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


def test_blocks_are_appended_in_the_order_the_runs_are_noted(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    for name in ("run_2", "run_0", "run_3", "run_1"):
        update_notes(notes, runs[name])
    assert blocks(notes.read_text()) == ["run_2", "run_0", "run_3", "run_1"]
    assert "## Run" not in notes.read_text()  # the coder's section headers are the coder's


def test_rerun_replaces_only_its_block(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    for name in ("run_0", "run_1", "run_2"):
        update_notes(notes, runs[name])
    before = notes.read_text()
    with_explained_variance(runs["run_1"], 0.777)
    new_block = update_notes(notes, runs["run_1"])
    text = notes.read_text()
    assert blocks(text) == ["run_0", "run_1", "run_2"]
    assert '"explained_variance": 0.777' in text and '"explained_variance": 0.912' not in text
    old_block = before[before.index("--- harness block run_1 begin"):]
    old_block = old_block[:old_block.index("--- harness block run_1 end ---\n") + 32]
    assert text == before.replace(old_block, new_block)


def test_coder_section_written_before_the_run_survives(tmp_path, runs):
    """The coder plans Run 1 under its own `## Run 1:` header before the launcher runs it."""
    notes = tmp_path / "notes.txt"
    update_notes(notes, runs["run_0"])
    plan = "## Run 1: cosine sparsity, k = 12\nPlan: the previous cosine variant.\nExpect fewer dead concepts.\n"
    with open(notes, "a") as handle:
        handle.write("\n" + plan)
    written = notes.read_text()
    update_notes(notes, runs["run_1"])
    text = notes.read_text()
    assert text.startswith(written)  # nothing before the new block moved or changed
    assert text.count("## Run 1:") == 1 and plan in text
    assert blocks(text) == ["run_0", "run_1"]


def test_text_written_between_runs_survives_reruns(tmp_path, runs):
    """After each run the coder writes its notes; later runs and reruns leave them alone."""
    notes = tmp_path / "notes.txt"
    update_notes(notes, runs["run_0"])
    update_notes(notes, runs["run_1"])
    remark = "## Run 1: Previous cosine variant\nResults above; absorption failed.  odd  spacing \n"
    with open(notes, "a") as handle:
        handle.write(remark)  # right after the block's end line, no blank line
    update_notes(notes, runs["run_2"])
    with open(notes, "a") as handle:
        handle.write("Run 2 notes, no newline at the end")
    outside = text_outside_blocks(notes.read_text())
    with_explained_variance(runs["run_1"], 0.777)
    update_notes(notes, runs["run_1"])
    update_notes(notes, runs["run_0"])
    text = notes.read_text()
    assert text_outside_blocks(text) == outside
    assert remark in text and text.endswith("Run 2 notes, no newline at the end")
    assert blocks(text) == ["run_0", "run_1", "run_2"] and '"explained_variance": 0.777' in text


def test_foreign_text_is_preserved_byte_for_byte(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    own_header = "# Title: My own title\n# Experiment description: written by hand.\n\n"
    remark = "## Run 0: the baseline\nResearcher: dead fraction looks low -- check the window.\n  indented  \n\n"
    trailer = "Plan: try k = 8 next.\nno newline at the end"
    s0, s2_old = notes_section(runs["run_0"]), notes_section(runs["run_2"])
    notes.write_text(own_header + s0 + remark + s2_old + "\n" + trailer)
    info_path = runs["run_2"] / "final_info.json"
    info = json.loads(info_path.read_text())
    info["sparse_probing"]["means"]["sae_top_1_test_accuracy"] = 0.742
    info_path.write_text(json.dumps(info))
    s1 = update_notes(notes, runs["run_1"])
    s2 = update_notes(notes, runs["run_2"])
    assert s2 != s2_old
    assert notes.read_text() == own_header + s0 + remark + s2 + "\n" + trailer + "\n\n" + s1


def test_a_begin_line_without_its_end_is_not_a_block(tmp_path, runs):
    """A coder who deletes a block's end line loses nothing: the rest is left alone."""
    notes = tmp_path / "notes.txt"
    update_notes(notes, runs["run_1"])
    cut = notes.read_text().replace("--- harness block run_1 end ---\n", "") + "My analysis of run 1.\n"
    notes.write_text(cut)
    update_notes(notes, runs["run_1"])
    text = notes.read_text()
    assert text.startswith(cut) and blocks(text) == ["run_1", "run_1"]
    assert text.count("--- harness block run_1 end ---") == 1


def test_degenerate_run_gets_a_warning_line(tmp_path, runs):
    section = update_notes(tmp_path / "notes.txt", runs["run_3"])
    warning = [line for line in section.splitlines() if line.startswith("WARNING: degenerate SAE: ")]
    assert len(warning) == 1
    assert "exceeds n_base/2" in warning[0] and "explained variance -0.083" in warning[0]
    assert "at chance" in warning[0]
    assert '"degenerate": true' in section
    assert "WARNING" not in update_notes(tmp_path / "notes.txt", runs["run_2"])


def test_legacy_seeded_run_is_described_and_flagged(tmp_path):
    run = F.write_legacy_run(tmp_path / "run_0")
    section = update_notes(tmp_path / "notes.txt", run)
    assert section.splitlines()[1] == "Run 0: Seeded baseline [legacy AI-Scientist template result]"
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


def test_run_without_a_number_has_a_block_under_its_name(tmp_path, runs):
    notes = tmp_path / "notes.txt"
    local = F.write_complete_run(tmp_path / "run_local", "baseline")
    update_notes(notes, local)
    update_notes(notes, runs["run_3"])
    update_notes(notes, local)
    text = notes.read_text()
    assert blocks(text) == ["run_local", "run_3"]
    assert "\nRun run_local: run_local [baseline]\n" in text


def test_a_study_run_is_compared_with_the_top_level_baseline(tmp_path):
    """study/run_1 has no run_0 beside it: its configuration is compared with the top-level run_0."""
    F.write_complete_run(tmp_path / "run_0", "baseline")
    study_run = F.write_partial_run(tmp_path / "study" / "run_1", "cosine_sparsity")
    block = update_notes(tmp_path / "study" / "notes.txt", study_run)
    assert "Changes from run_0: variant \"baseline\" -> \"cosine_sparsity\"; " in block


def test_the_command_line_writes_the_notebook_beside_each_run(tmp_path, capsys):
    F.write_complete_run(tmp_path / "run_0", "baseline")
    study_run = F.write_complete_run(tmp_path / "study" / "run_2", "tuned_cosine")
    assert main([str(tmp_path / "run_0"), str(study_run)]) == 0
    assert blocks((tmp_path / "notes.txt").read_text()) == ["run_0"]
    assert blocks((tmp_path / "study" / "notes.txt").read_text()) == ["run_2"]
    assert "--- harness block run_2 end ---" in capsys.readouterr().out


def test_no_temporary_files_are_left(tmp_path, runs):
    update_notes(tmp_path / "notes.txt", runs["run_0"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["notes.txt"]

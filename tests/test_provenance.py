"""Provenance: what a run records about the code that produced it."""

import subprocess

from sae_harness.run.provenance import git_state


def test_the_notebook_and_run_folders_a_run_writes_do_not_mark_the_code_modified(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "run_1").mkdir()
    (tmp_path / "study" / "run_2").mkdir(parents=True)
    written = ("notes.txt", "run_1/final_info.json", "study/notes.txt", "study/run_2/final_info.json")
    for name in ("experiment.py", "study/plot_notes.md", *written):
        (tmp_path / name).write_text("first\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    assert git_state(tmp_path)["dirty"] is False
    for name in written:
        (tmp_path / name).write_text("first\nrerun\n")
    state = git_state(tmp_path)
    assert state["dirty"] is False and state["changed"] == []
    (tmp_path / "study/plot_notes.md").write_text("edited\n")  # not what a run writes
    assert git_state(tmp_path)["changed"] == ["study/plot_notes.md"]
    (tmp_path / "study/plot_notes.md").write_text("first\n")
    (tmp_path / "experiment.py").write_text("edited\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and state["changed"] == ["experiment.py"]


def test_a_run_reads_the_git_state_of_the_whole_checkout():
    from conftest import REPO
    from sae_harness.run import experiment_run

    # the folder whose edits a run records: the checkout (experiment.py is what the coder edits),
    # not the package folder the module sits in
    assert experiment_run.REPO == REPO and (experiment_run.REPO / "experiment.py").is_file()

"""Provenance: what a run records about the code that produced it."""

import subprocess

from sae_harness.provenance import git_state


def test_the_notebook_and_run_folders_a_run_writes_do_not_mark_the_code_modified(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "run_1").mkdir()
    for name in ("experiment.py", "notes.txt", "run_1/final_info.json"):
        (tmp_path / name).write_text("first\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "notes.txt").write_text("first\nrun_1's section\n")
    (tmp_path / "run_1/final_info.json").write_text("rerun\n")
    state = git_state(tmp_path)
    assert state["dirty"] is False and state["changed"] == []
    (tmp_path / "experiment.py").write_text("edited\n")
    state = git_state(tmp_path)
    assert state["dirty"] is True and state["changed"] == ["experiment.py"]

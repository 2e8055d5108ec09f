"""The AI-Scientist launcher's loop on a fresh copy of the repository, driven as
ai_scientist/perform_experiments.py drives a template folder: before run i it copies
experiment.py to run_i.py, runs `python experiment.py --out_dir=run_i` in the folder (no other
argument; on a non-zero exit it deletes run_i and shows the coder the last 1,500 characters of
stderr), reads run_i/final_info.json as {k: v["means"]}, asks the coder for notes in notes.txt,
and at the end runs `python plot.py` in the folder.

The coder's edits are textual edits of the copy's experiment.py. The launcher passes no
arguments, so the runs are routed to the tiny Gemma-2 fixture from outside experiment.py: a
sitecustomize.py on PYTHONPATH wraps sae_harness.run.command_line.run_command so that a run with no
environment of its own runs on the fixture, with the variant the harness chooses itself
(read_run_environment: EXPERIMENT_VARIANT, else the default) and test_end_to_end's TINY sizes.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FIXTURES, REPO
from test_end_to_end import TINY

pytestmark = pytest.mark.e2e  # whole runs or subprocesses (conftest.TIERS)

LAUNCHER_STDERR = 1500  # perform_experiments.MAX_STDERR_OUTPUT: what the coder sees of stderr
RUN_SECONDS = 600

SITECUSTOMIZE = '''\
"""Run experiment.py on the tiny Gemma-2 fixture when it is given no environment (the launcher's
plain `python experiment.py --out_dir=run_i`)."""
import json
import os
from dataclasses import replace
from pathlib import Path

import conftest  # offline settings and the fixture's HF_HOME, before any Hugging Face import
import sae_harness.run.command_line as command_line
from tiny_gemma2 import build, tiny_environment

_run_command = command_line.run_command


def run_on_the_tiny_fixture(run, description, argv=None, environment=None, overrides=None):
    """run_command, with the tiny fixture's environment and sizes when none is given."""
    if environment is None:
        chosen = command_line.read_run_environment()  # the variant the harness picks itself
        text = build(conftest.FIXTURES)["text"]
        environment = replace(tiny_environment(text, Path(os.environ["LAUNCHER_TEST_CACHE"])),
                              variant=chosen.variant)
        overrides = {**json.loads(os.environ["LAUNCHER_TEST_SIZES"]), **(overrides or {})}
    return _run_command(run, description, argv, environment, overrides)


command_line.run_command = run_on_the_tiny_fixture
Path(os.environ["LAUNCHER_TEST_HARNESS"]).write_text(command_line.__file__)  # which copy ran
'''

CODER_PLAN = "## Run 1: tuned cosine, the default\nPlan: train the idea as it stands.\n"
CODER_NOTES_1 = "## Run 1: Tuned cosine (this idea)\nThe coder's analysis of run 1.  Odd  spacing. \n"
CODER_NOTES_2 = "## Run 2: Previous cosine variant\nThe coder's analysis of run 2, no newline at the end"


def fresh_copy(destination: Path) -> Path:
    """The repository's files as a clone would hold them (tracked, and new files not ignored)."""
    names = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], capture_output=True, text=True, check=True).stdout
    for name in filter(None, names.split("\0")):
        source = REPO / name
        if source.is_file():  # a file deleted in the working tree but still in the index is not
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def edit(path: Path, old: str, new: str) -> None:
    """The coder's textual edit: `old` must be there, exactly once."""
    text = path.read_text()
    assert text.count(old) == 1, f"{path.name} does not hold {old!r} exactly once"
    path.write_text(text.replace(old, new))


def launch(folder: Path, number: int, env: dict) -> subprocess.CompletedProcess:
    """One run as the launcher makes it (its copy, its command, its clean-up on failure)."""
    shutil.copy(folder / "experiment.py", folder / f"run_{number}.py")
    result = subprocess.run([sys.executable, "experiment.py", f"--out_dir=run_{number}"], cwd=folder,
                            capture_output=True, text=True, env=env, timeout=RUN_SECONDS)
    if result.returncode != 0 and (folder / f"run_{number}").exists():
        shutil.rmtree(folder / f"run_{number}")
    return result


def what_the_coder_sees(result: subprocess.CompletedProcess) -> str:
    return result.stderr[-LAUNCHER_STDERR:]


@pytest.fixture(scope="module")
def loop(tiny_gemma2, tmp_path_factory):
    """Two successful runs (the default variant, then an edit that changes it), the coder's
    notes around them, plot.py, then an edit that makes the run fail."""
    root = tmp_path_factory.mktemp("launcher")
    folder = fresh_copy(root / "template")
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    plain = {k: v for k, v in os.environ.items()
             if not k.startswith("EXPERIMENT_") and k not in ("PYTHONPATH", "SAE_HARNESS_TEST_FIXTURES")}
    plain.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    # the sitecustomize imports the harness before the script's folder joins sys.path, so the
    # copy's folder is named first: the run uses the copy's harness, as the launcher's would
    env = {**plain, "PYTHONPATH": os.pathsep.join([str(site), str(folder), str(folder / "tests")]),
           "LAUNCHER_TEST_HARNESS": str(root / "harness_used.txt"),
           "SAE_HARNESS_TEST_FIXTURES": str(FIXTURES), "LAUNCHER_TEST_CACHE": str(root / "cache"),
           "LAUNCHER_TEST_SIZES": json.dumps(TINY)}
    record = {"folder": folder, "top_level_before": sorted(p.name for p in folder.glob("run_*"))}
    original = (folder / "experiment.py").read_text()
    notes = folder / "notes.txt"

    with open(notes, "a") as handle:
        handle.write("\n" + CODER_PLAN)  # the coder plans run 1 before it runs
    record["run_1"] = launch(folder, 1, env)
    record["harness_used"] = Path((root / "harness_used.txt").read_text())
    with open(notes, "a") as handle:
        handle.write(CODER_NOTES_1)  # and writes its notes on run 1 after it
    record["notes_before_run_2"] = notes.read_text()

    edit(folder / "experiment.py", 'DEFAULT_VARIANT = "tuned_cosine"', 'DEFAULT_VARIANT = "cosine_sparsity"')
    record["run_2"] = launch(folder, 2, env)
    with open(notes, "a") as handle:
        handle.write(CODER_NOTES_2)
    record["notes"] = notes.read_text()

    record["plot"] = subprocess.run([sys.executable, "plot.py"], cwd=folder, capture_output=True,
                                    text=True, env=plain, timeout=RUN_SECONDS)

    (folder / "experiment.py").write_text(original)
    edit(folder / "experiment.py", "concept_k: int = 10", "concept_k: int = -1")
    record["run_3"] = launch(folder, 3, env)
    return record


def final_info(folder: Path, number: int) -> dict:
    return json.loads((folder / f"run_{number}" / "final_info.json").read_text())


def table_rows(stdout: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [c.strip() for c in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("| run_")}


def test_a_fresh_copy_holds_only_the_baseline_run(loop):
    assert loop["top_level_before"] == ["run_0"]


def test_the_run_uses_the_copys_harness_not_the_installed_checkout(loop):
    assert loop["harness_used"].is_relative_to(loop["folder"]), loop["harness_used"]


@pytest.mark.parametrize("number", [1, 2])
def test_each_run_exits_0_with_final_info_in_the_launchers_shape(loop, number):
    result = loop[f"run_{number}"]
    assert result.returncode == 0, f"run_{number} failed: {what_the_coder_sees(result)}"
    folder = loop["folder"]
    assert (folder / f"run_{number}.py").is_file()
    info = final_info(folder, number)
    assert all(isinstance(v, dict) and isinstance(v.get("means"), dict) for v in info.values()), \
        f"run_{number}/final_info.json has a top-level value without a 'means' dict"
    means = {k: v["means"] for k, v in info.items()}  # what the launcher shows the coder
    assert means["training"]["steps"] == TINY["training_tokens"] / TINY["batch_size"]
    assert "sparse_probing" in means and "core" in means


def test_run_1_trains_the_default_variant(loop):
    config = json.loads((loop["folder"] / "run_1" / "config.json").read_text())
    assert config["variant"] == "tuned_cosine"


def test_run_2_trains_the_variant_the_coders_edit_made_the_default(loop):
    config = json.loads((loop["folder"] / "run_2" / "config.json").read_text())
    assert config["variant"] == "cosine_sparsity", f"run_2 trained {config['variant']}"
    assert table_rows(loop["plot"].stdout)["run_2"][1] == "Previous cosine variant"


def test_plot_draws_every_run_of_the_loop_labelled_by_its_variant(loop):
    result, folder = loop["plot"], loop["folder"]
    assert result.returncode == 0, f"plot.py failed: {result.stderr[-LAUNCHER_STDERR:]}"
    rows = table_rows(result.stdout)
    assert sorted(rows) == ["run_0", "run_1", "run_2"]
    for name in ("run_1", "run_2"):
        title = json.loads((folder / name / "config.json").read_text())["variant_title"]
        assert rows[name][1] == title, f"{name} is labelled {rows[name][1]!r}, not {title!r}"
    for figure in ("sparse_probing.png", "l0_vs_ev.png", "training.png", "weights.png"):
        assert (folder / "plots" / figure).is_file() and f"wrote plots/{figure}" in result.stdout
    assert "absorption: left out run_1: no absorption results" in result.stdout  # drawn, or said why


def test_the_coders_notes_survive_every_run(loop):
    notes, before_run_2 = loop["notes"], loop["notes_before_run_2"]
    assert CODER_PLAN in before_run_2 and CODER_NOTES_1 in before_run_2
    assert notes.startswith(before_run_2)  # run 2 added its block after everything there
    assert notes.endswith(CODER_NOTES_2)
    for name in ("run_0", "run_1", "run_2"):
        assert notes.count(f"--- harness block {name} begin ") == 1, f"{name}'s block is not there once"
    assert notes.count("## Run 1:") == 2 and notes.count("## Run 2:") == 1  # the coder's, only


def test_a_run_the_edit_breaks_fails_and_says_why_in_its_last_line(loop):
    result = loop["run_3"]
    assert result.returncode != 0
    assert not (loop["folder"] / "run_3").exists()  # the launcher deleted it
    last = what_the_coder_sees(result).strip().splitlines()[-1]
    assert last.startswith("error: ") and "concept_k" in last, f"the last stderr line is {last!r}"

"""The package reads from experiment.py only what HARNESS_READS at its top declares.

The package's source is read as the coder never reads it: every `cfg.<name>` of experiment.py's
Config, every `out.<name>` of its SAEOutput, every key of config.json's config and every loss
term the training session reads must be declared, so that the start-of-run check covers all of
them (a name read but not declared would fail far from the edit that renamed it).
"""

import ast
from pathlib import Path

import pytest

import experiment as E
from conftest import REPO
from sae_harness.training.contract import check_contract, unknown_config_reads
from sae_harness.errors import ConfigurationError

PACKAGE = REPO / "sae_harness"
CONFIG_READERS = ("run/experiment_run.py", "training/training_session.py")
"""The modules given experiment.py's Config object."""
RECORD_READERS = ("records/degeneracy.py", "records/notes.py", "records/run_directory.py",
                  "records/frontier.py")
"""The modules that read config.json's `config` (a dict named cfg)."""
OUTPUT_READERS = ("evals/heldout.py", "training/concept_diagnostics.py", "evals/hierarchy.py",
                  "evals/sae_bench_view.py")
"""The modules given an SAEOutput (named out)."""


def attributes_read(path: Path, base: str) -> set[str]:
    """Names read as `<base>.name` or `self.<base>.name` in a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            b = node.value
            if (isinstance(b, ast.Name) and b.id == base) or (
                    isinstance(b, ast.Attribute) and b.attr == base
                    and isinstance(b.value, ast.Name) and b.value.id == "self"):
                found.add(node.attr)
    return found


def keys_read(path: Path, names: tuple[str, ...]) -> set[str]:
    """String keys read as `x["key"]` or `x.get("key")` on a variable named in `names`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            target = node.value
            key = node.slice.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "get" and node.args and isinstance(node.args[0], ast.Constant)):
            target, key = node.func.value, node.args[0].value
        else:
            continue
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name in names and isinstance(key, str):
            found.add(key)
    return found


def test_the_package_reads_only_declared_config_fields():
    declared = set(E.HARNESS_READS["Config"])
    for module in CONFIG_READERS:
        read = attributes_read(PACKAGE / module, "cfg")
        assert read and read <= declared, f"{module} reads undeclared Config fields {read - declared}"
    for module in RECORD_READERS:
        read = keys_read(PACKAGE / module, ("cfg",))
        assert read <= declared, f"{module} reads undeclared config.json fields {read - declared}"


def test_the_package_reads_only_declared_sae_output_fields():
    declared = set(E.HARNESS_READS["SAEOutput"])
    for module in OUTPUT_READERS:
        read = attributes_read(PACKAGE / module, "out")
        assert read and read <= declared, f"{module} reads undeclared SAEOutput fields {read - declared}"


def test_the_training_session_reads_only_declared_loss_terms():
    read = keys_read(PACKAGE / "training" / "training_session.py", ("values",))
    declared = set(E.HARNESS_READS["LossTerms"]) | {"l0_concept"}  # read with a default
    assert read and read <= declared, f"undeclared loss terms {read - declared}"


def test_every_declared_name_exists_and_the_check_names_a_missing_one():
    check_contract(E.HARNESS_READS, Config=E.Config, SAEOutput=E.SAEOutput, LossTerms=E.LossTerms)
    reads = {**E.HARNESS_READS, "Config": {**E.HARNESS_READS["Config"], "tokens_per_step": "a test"}}
    with pytest.raises(ConfigurationError, match=r"Config.tokens_per_step \(read for a test\)"):
        check_contract(reads, Config=E.Config, SAEOutput=E.SAEOutput, LossTerms=E.LossTerms)


def test_a_cfg_read_of_a_missing_field_is_found_with_its_line():
    source = "def f(cfg):\n    return cfg.lr + cfg.learning_rate\n"
    assert unknown_config_reads(E.Config, source) == ["cfg.learning_rate (line 2)"]
    assert unknown_config_reads(E.Config, (REPO / "experiment.py").read_text()) == []

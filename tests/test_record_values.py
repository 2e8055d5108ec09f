"""The helpers every cache and every record reader share: the cache-key digest and the test of
a finite number."""

import json
import math

import numpy as np
import pytest
import torch

from sae_harness.records.cache_keys import key_digest, keyed_folder
from sae_harness.records.numbers import finite_number
from sae_harness.records.run_directory import finite_means


def test_the_digest_is_the_sha256_of_the_sorted_json_so_existing_caches_keep_their_names():
    # sha256 of '{"layer": 5, "model": "gemma"}' (sha256sum), first 20 and 16 hex digits
    assert key_digest({"model": "gemma", "layer": 5}) == "c361dbd7b57a9e6c2430"
    assert key_digest({"layer": 5, "model": "gemma"}, length=16) == "c361dbd7b57a9e6c"


def test_any_changed_input_changes_the_digest():
    key = {"model": "gemma", "layer": 5, "versions": {"torch": "2.14.1"}}
    changed = [{**key, "layer": 6}, {**key, "versions": {"torch": "2.14.2"}}, {**key, "extra": None}]
    assert len({key_digest(k) for k in [key, *changed]}) == 4


def test_a_keyed_folder_holds_its_key_and_is_the_same_folder_next_time(tmp_path):
    key = {"model": "gemma", "layer": 5}
    folder = keyed_folder(tmp_path, key)
    assert folder == tmp_path / key_digest(key) and folder.is_dir()
    assert json.loads((folder / "key.json").read_text()) == key
    (folder / "entry").write_text("kept")
    assert keyed_folder(tmp_path, dict(reversed(list(key.items())))) == folder
    assert (folder / "entry").read_text() == "kept"


@pytest.mark.parametrize("value, expected", [
    (3, 3.0), (0.25, 0.25), (np.float32(0.5), 0.5), (np.int64(7), 7.0), (torch.tensor(1.5), 1.5),
    (None, None), (True, None), ("0.5", None), (math.nan, None), (math.inf, None),
    (-math.inf, None), (np.float64("nan"), None), ([1.0], None), ({"a": 1}, None),
])
def test_finite_number(value, expected):
    assert finite_number(value) == expected


def test_a_result_group_keeps_its_finite_numbers_and_names_the_rest():
    kept, dropped = finite_means({"ev": 0.9, "l0": np.float32(12.0), "loss": math.nan, "oops": "x"})
    assert kept == {"ev": 0.9, "l0": 12.0} and sorted(dropped) == ["loss", "oops"]


def test_a_run_recorded_under_the_old_config_names_reads_under_the_new_ones(tmp_path):
    from dataclasses import asdict

    import experiment as E
    from sae_harness.records.run_directory import (RENAMED_CONFIG_FIELDS, holds_finished_run,
                                                   load_run, read_config_json, read_training_log)

    cfg = E.make_config("tuned_cosine", "embedded")
    recorded = {old: asdict(cfg)[new] for old, new in RENAMED_CONFIG_FIELDS.items()}
    recorded.update({k: v for k, v in json.loads(json.dumps(asdict(cfg))).items()
                     if k not in RENAMED_CONFIG_FIELDS.values()})
    (tmp_path / "config.json").write_text(json.dumps({"config": recorded}))
    (tmp_path / "final_info.json").write_text(json.dumps({"training": {"means": {"steps": 1.0}}}))
    (tmp_path / "training_log.jsonl").write_text(json.dumps({"step": 0, "lw2": 0.001}) + "\n")

    read = read_config_json(tmp_path / "config.json")["config"]
    assert not set(RENAMED_CONFIG_FIELDS) & set(read)
    assert read["n_base"] == cfg.n_base and read["weight_l1_concept_max"] == cfg.weight_l1_concept_max
    assert holds_finished_run(tmp_path, ("training",), cfg)  # scripts reuse it
    assert not holds_finished_run(tmp_path, ("training",), E.make_config("cosine_sparsity", "embedded"))
    assert load_run(tmp_path).config["config"]["n_base"] == cfg.n_base
    assert read_training_log(tmp_path / "training_log.jsonl") == [{"step": 0, "weight_l1_concept_coef": 0.001}]


def test_a_half_written_training_log_line_raises_unless_the_reader_skips_it(tmp_path):
    from sae_harness.records.run_directory import read_training_log

    path = tmp_path / "training_log.jsonl"
    path.write_text(json.dumps({"step": 0, "lw2": 0.5}) + "\n" + '{"step": 1, "lo')  # a crash mid-write
    with pytest.raises(ValueError):
        read_training_log(path)
    assert read_training_log(path, skip_unreadable=True) == [{"step": 0, "weight_l1_concept_coef": 0.5}]

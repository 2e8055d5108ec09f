"""An end-to-end run on the tiny Gemma-2 through the real setting's code path."""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

import experiment as E
from conftest import REPO
from sae_harness.evals.heldout import heldout_statistics
from sae_harness.records.run_directory import read_training_log
from tiny_gemma2 import tiny_environment

pytestmark = pytest.mark.e2e  # whole runs or subprocesses (conftest.TIERS)

TINY = dict(n_base=256, batch_size=128, training_tokens=128 * 40, heldout_tokens=512, lr=4e-3,
            log_every=5, dead_window_tokens=2048)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tiny_run(tiny_gemma2, tiny_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run_1"
    E.run_experiment(out, tiny_environment(tiny_gemma2["text"], tiny_cache), overrides=TINY)
    return out


def test_end_to_end_run_writes_every_promised_file(tiny_run):
    for name in ("final_info.json", "run_status.json", "config.json", "training_log.jsonl",
                 "sae/cfg.json", "sae/sae_weights.safetensors", "sae/sae_state.safetensors",
                 "sae/sae_state.json"):
        assert (tiny_run / name).is_file(), name
    info = json.loads((tiny_run / "final_info.json").read_text())
    means = info["training"]["means"]
    for key in ("final_loss", "steps", "tokens", "l0_base", "l0_concept", "l0_total",
                "explained_variance", "dead_fraction_base", "dead_fraction_concept", "seconds"):
        assert isinstance(means[key], float), key
    assert means["steps"] == 40 and means["tokens"] == 40 * 128
    assert means["l0_total"] == pytest.approx(means["l0_base"] + means["l0_concept"])
    assert json.loads((tiny_run / "run_status.json").read_text())["state"] == "finished"
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["preset"]["model_name"] == "google/gemma-2-2b"
    assert config["provenance"]["packages"]["sae-bench"] == "0.6.0"
    # which precision produced the numbers, and why (the fixture pins its model to fp32)
    precision = config["precision"]
    assert precision["model_dtype"] == config["preset"]["model_dtype"] == "float32"
    assert precision["sae_matmul_dtype"] in ("float32", "bfloat16")
    assert "sae" in precision["speeds"] and precision["reason"].startswith("cpu")
    # on a CPU the heap reuses freed memory (cpu_heap.py) where glibc lets it
    glibc = platform.libc_ver()[0] == "glibc" and "glibc.malloc" not in os.environ.get("GLIBC_TUNABLES", "")
    assert config["provenance"]["cpu_heap"].startswith("freed memory reused" if glibc else ("as ", "the C"))


def test_every_eval_runs_and_writes_its_group_and_json(tiny_run):
    info = json.loads((tiny_run / "final_info.json").read_text())
    status = json.loads((tiny_run / "run_status.json").read_text())
    for group in ("weights", "core", "sparse_probing"):
        assert (tiny_run / f"{group}.json").is_file(), group
        assert info[group]["means"]["seconds"] > 0
    accuracies = {k: v for k, v in info["sparse_probing"]["means"].items() if k.endswith("accuracy")}
    assert len(accuracies) == 14 and all(0 <= v <= 1 for v in accuracies.values())
    # absorption cannot run with the fixture's tokenizer: recorded, not silently missing
    assert "absorption" not in info and not (tiny_run / "absorption.json").exists()
    assert "does not suit this tokenizer" in status["failures"]["absorption"]
    # the hierarchy eval ran on the concept level (hierarchy.json holds a row per alive concept)
    assert "hierarchy" not in status.get("failures", {}) and 0 < info["hierarchy"]["means"]["nmi_mean"] <= 1
    assert (tiny_run / "hierarchy.json").is_file()
    assert status["degenerate_reasons"] == info["training"]["degenerate_reasons"]
    notes = (tiny_run.parent / "notes.txt").read_text()
    assert notes.count("--- harness block run_1 begin ") == notes.count("--- harness block run_1 end ---\n") == 1
    assert "\nRun 1: Tuned cosine (this idea) [tuned_cosine]\n" in notes and "absorption" in notes


def test_training_log_records_every_term_and_the_loss_decreases(tiny_run):
    log = read_training_log(tiny_run / "training_log.jsonl")
    for key in ("step", "lr", "weight_l1_concept_coef", "total", "reconstruction", "l1_base", "l1_concept",
                "weight_l1_base", "weight_l1_concept", "l0_base", "l0_concept"):
        assert key in log[0], key
    assert log[-1]["step"] == 39
    assert log[-1]["reconstruction"] < 0.9 * log[0]["reconstruction"]
    assert log[-1]["total"] < log[0]["total"]
    lw2 = [r["weight_l1_concept_coef"] for r in log]
    assert lw2 == sorted(lw2)  # the ramp only rises


def test_the_saved_base_level_is_a_standard_sae_lens_sae_computing_z1(tiny_run, tiny_lm):
    preset, lm = tiny_lm
    sae = E.HierarchicalSAE.load(tiny_run / "sae")
    tokens = torch.tensor([lm.tokenizer("Return the value of the attribute. " * 5)["input_ids"][:32]])
    x = lm.model(tokens, stop_at_layer=preset.hook_layer + 1)[0, 1:]  # BOS dropped, as in training
    # (that the loaded SAE is the trained one: the held-out statistics test below)
    # the base level alone is a standard SAE-Lens SAE computing z1
    from sae_lens import SAE
    base = SAE.load_from_disk(tiny_run / "sae")
    assert torch.allclose(base.encode(x), sae.encode(x)[:, :sae.n_base], atol=1e-4)

def test_saved_sae_reproduces_the_recorded_heldout_statistics(tiny_run, tiny_lm, tiny_cache):
    from sae_harness.data.activations import prepare_activations

    preset, lm = tiny_lm
    data = prepare_activations(lm, preset, TINY["training_tokens"], TINY["heldout_tokens"],
                               tiny_cache, TINY["batch_size"], seed=0)
    assert data.cache_hit
    sae = E.HierarchicalSAE.load(tiny_run / "sae")
    recorded = json.loads((tiny_run / "final_info.json").read_text())["training"]["means"]
    stats = heldout_statistics(sae, data.heldout)
    for key in ("explained_variance", "mse", "l0_base", "l0_concept", "dead_fraction_base"):
        assert stats[key] == pytest.approx(recorded[key], rel=1e-6, abs=1e-9), key


def test_sae_meets_sae_bench_custom_sae_expectations(tiny_run, tiny_lm):
    """What sae_bench.custom_saes.base_sae.BaseSAE.test_sae and load_and_format_sae check."""
    from sae_bench.sae_bench_utils import activation_collection, general_utils

    preset, lm = tiny_lm
    sae = E.HierarchicalSAE.load(tiny_run / "sae")
    d, width = sae.d_in, sae.n_base + sae.n_concept
    assert sae.W_dec.shape == (width, d) and sae.W_enc.shape == (d, width)
    assert sae.b_enc.shape == (width,) and sae.b_dec.shape == (d,)
    assert sae.cfg.d_sae == width and sae.cfg.hook_name == preset.hook_name
    assert sae.dtype == torch.float32 and str(sae.device) == "cpu"
    _, same, _ = general_utils.load_and_format_sae("custom", sae, "cpu")
    assert same is sae and general_utils.check_decoder_norms(sae.W_dec.data)
    assert sae.cfg.to_dict()["d_sae"] == width

    tokens = torch.tensor([lm.tokenizer("The scientist named the population. " * 4)["input_ids"][:24]])
    _, cache = lm.model.run_with_cache(tokens, names_filter=[sae.cfg.hook_name],
                                       stop_at_layer=sae.cfg.hook_layer + 1)
    acts = cache[sae.cfg.hook_name]
    encoded = sae.encode(acts)
    assert encoded.shape == (*acts.shape[:2], width)
    decoded = sae.decode(encoded)
    flat = sae(acts.reshape(-1, d)).reshape(acts.shape)
    assert torch.allclose(flat, decoded, atol=1e-5)
    # SAE-Bench's mean-pooled encoding runs on it (bf16 inputs too, as in the real setting)
    pooled = activation_collection.get_sae_meaned_activations({"c": acts.to(torch.bfloat16)}, sae, 4)
    assert pooled["c"].shape == (1, width)


def test_a_finished_run_is_not_overwritten_without_permission(tiny_run, tiny_gemma2, tmp_path):
    from sae_harness.errors import ConfigurationError

    before = (tiny_run / "final_info.json").read_text()
    with pytest.raises(ConfigurationError, match="EXPERIMENT_OVERWRITE=1"):
        E.run_experiment(tiny_run, tiny_environment(tiny_gemma2["text"], tmp_path), overrides=TINY)
    assert (tiny_run / "final_info.json").read_text() == before


def run_cli(*args, **env):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, str(REPO / "experiment.py"), *args], capture_output=True,
                          text=True, env=full_env, cwd=REPO, timeout=300)


@pytest.mark.parametrize("args,env,fragment", [
    ((), {}, "--out_dir"),
    (("--out_dir=x", "--lr=1"), {}, "unrecognized arguments"),
    (("--out_dir=/tmp/never_written",), {"EXPERIMENT_VARIANT": "nope"}, "EXPERIMENT_VARIANT='nope'"),
])
def test_bad_input_fails_fast_with_one_explaining_last_line(args, env, fragment):
    """As a process: the exit code and the last stderr line (the rest in-process, below)."""
    result = run_cli(*args, **env)
    assert result.returncode != 0
    assert fragment in result.stderr.strip().splitlines()[-1]
    assert not os.path.exists("/tmp/never_written")


@pytest.mark.parametrize("env,fragment", [
    ({"EXPERIMENT_PRESET": "moon"}, "EXPERIMENT_PRESET='moon'"),
    ({"EXPERIMENT_TOKENS": "lots"}, "EXPERIMENT_TOKENS='lots'"),
    ({"EXPERIMENT_PRESET": "real"}, "needs a CUDA GPU"),
])
def test_a_bad_environment_variable_stops_the_run_with_one_line(env, fragment, tmp_path, monkeypatch, capsys):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert E.main([f"--out_dir={tmp_path / 'run_1'}"]) == 2
    assert fragment in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "run_1").exists()


def test_each_eval_writes_its_whole_output_to_its_log(tiny_run):
    """SAE-Bench's and scikit-learn's prints go to run/logs/<eval>.log, not the console; a failed
    eval's log ends in its traceback (eval_logs.py)."""
    logs = tiny_run / "logs"
    probing = (logs / "sparse_probing.log").read_text()
    assert "Test accuracy for" in probing and "[sparse_probing] accuracy LLM / SAE" in probing
    assert "[core] explained variance" in (logs / "core.log").read_text()
    absorption = (logs / "absorption.log").read_text()
    assert "Traceback (most recent call last)" in absorption and "does not suit this tokenizer" in absorption

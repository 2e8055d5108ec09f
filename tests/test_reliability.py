"""Faults injected on purpose: kills, signals, NaN, damaged caches, bad input. Nothing is lost."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import experiment as E
from conftest import REPO
from sae_harness.data import activations as A
from sae_harness.training.checkpoint import Checkpoint
from sae_harness.errors import ConfigurationError, DataError, HarnessError
from sae_harness.records.run_directory import CHECKPOINT, RunDirectory
from tiny_gemma2 import tiny_environment, tiny_real_preset


RUNNER = REPO / "tests" / "run_tiny_experiment.py"
SHORT = dict(n_base=128, batch_size=64, training_tokens=64 * 60, heldout_tokens=256,
             log_every=2, checkpoint_every_steps=4, lr=4e-3)
TIMING = {"seconds", "tokens_per_second", "resumed_at_step", "activation_seconds",
          "activation_cache_hit"}


def start(out_dir, cache_dir, overrides=SHORT, step_seconds=0.0):
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"}
    return subprocess.Popen([sys.executable, str(RUNNER), str(out_dir), str(cache_dir),
                             json.dumps(overrides), str(step_seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint_after(out_dir, step, proc, timeout=240):
    """Wait until the run's checkpoint is at `step` or later."""
    deadline = time.time() + timeout
    path = Path(out_dir) / CHECKPOINT
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            try:
                if torch.load(path, weights_only=False)["step"] >= step:
                    return
            except Exception:
                pass  # being replaced right now
        time.sleep(0.2)
    raise AssertionError("no checkpoint in time")


def weights(run_dir):
    sae = Path(run_dir) / "sae"
    return (sae / "sae_weights.safetensors").read_bytes(), (sae / "sae_state.safetensors").read_bytes()


def training_means(run_dir):
    means = json.loads((Path(run_dir) / "final_info.json").read_text())["training"]["means"]
    return {k: v for k, v in means.items() if k not in TIMING}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def uninterrupted(tiny_gemma2, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "whole"
    proc = start(out, cache_dir)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert not (out / CHECKPOINT).exists()  # removed once the run finished
    return out


@pytest.mark.e2e
def test_sigterm_saves_a_checkpoint_and_the_rerun_reaches_the_same_weights(uninterrupted, cache_dir, tmp_path):
    out = tmp_path / "interrupted"
    proc = start(out, cache_dir, step_seconds=0.05)
    wait_for_checkpoint_after(out, 8, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "run the same command to resume" in err.strip().splitlines()[-1]
    status = json.loads((out / "run_status.json").read_text())
    assert status["state"] == "interrupted"
    stopped_at = torch.load(out / CHECKPOINT, weights_only=False)["step"]
    assert 8 <= stopped_at < 60

    proc = start(out, cache_dir)
    out_text, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert f"resuming from the checkpoint at step {stopped_at}" in out_text
    assert weights(out) == weights(uninterrupted)  # bitwise
    assert training_means(out) == training_means(uninterrupted)
    steps = [json.loads(line)["step"] for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume


@pytest.mark.e2e
def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(uninterrupted, cache_dir, tmp_path):
    out = tmp_path / "killed"
    proc = start(out, cache_dir, step_seconds=0.05)
    wait_for_checkpoint_after(out, 12, proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate(timeout=60)
    assert json.loads((out / "run_status.json").read_text())["state"] == "running"
    proc = start(out, cache_dir)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert weights(out) == weights(uninterrupted)


class FakeData:
    """Activations whose batch `bad_step` holds a NaN."""

    def __init__(self, bad_step, d=16, batch=32):
        self.d_model, self.bad_step, self.batch_size = d, bad_step, batch
        self.heldout = torch.randn(64, d)

        class Batches:
            def first_batch(inner):
                return self.batch(0)

            def iterate(inner, start, n):
                for step in range(start, n):
                    yield self.batch(step)

        self.train = Batches()

    def batch(self, step):
        x = torch.randn(self.batch_size, self.d_model, generator=torch.Generator().manual_seed(step)) + 3
        if step == self.bad_step:
            x[0, 0] = float("nan")
        return x


def test_nan_loss_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = E.Config(n_base=32, concept_k=2, batch_size=32, training_tokens=32 * 40,
                   log_every=1, checkpoint_every_steps=5, lr_warmup_fraction=1 / 40)
    run = RunDirectory(tmp_path)
    preset = tiny_real_preset(tmp_path)
    with pytest.raises(HarnessError, match="diverged at step 17"):
        E.train_sae(cfg, preset.device, FakeData(bad_step=17), run)
    state = Checkpoint(run.file(CHECKPOINT)).load()
    assert state["step"] == 15  # saved after step 14, before the NaN
    assert all(torch.isfinite(v).all() for v in state["trainer"]["sae"].values())


def test_unreadable_checkpoint_is_refused_not_used(tmp_path):
    path = tmp_path / CHECKPOINT
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot be read"):
        Checkpoint(path).load()


@pytest.mark.e2e
def test_an_unfinished_run_with_another_configuration_is_not_resumed(uninterrupted, tiny_gemma2, cache_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"config": {"lr": 123}}))
    (out / "run_status.json").write_text(json.dumps({"state": "failed"}))
    env = tiny_environment(tiny_gemma2["text"], cache_dir)
    with pytest.raises(ConfigurationError, match="another configuration"):
        E.run_experiment(out, env, overrides=dict(SHORT))
    assert json.loads((out / "config.json").read_text()) == {"config": {"lr": 123}}


def test_two_processes_never_write_one_run(tmp_path):
    run = RunDirectory(tmp_path)
    with run.lock():
        with pytest.raises(ConfigurationError, match="another experiment is running"):
            with RunDirectory(tmp_path).lock():
                pass


def test_a_truncated_activation_cache_is_rebuilt(tiny_lm, tmp_path):
    preset, lm = tiny_lm
    first = A.prepare_activations(lm, preset, 300, 50, tmp_path, 50, seed=0)
    data_path = first.cache_dir / "activations.bin"
    data_path.write_bytes(data_path.read_bytes()[: data_path.stat().st_size // 2])
    again = A.prepare_activations(lm, preset, 300, 50, tmp_path, 50, seed=0)
    assert not again.cache_hit
    assert torch.equal(again.heldout, first.heldout)
    assert A.ActivationCache(tmp_path, A.ActivationSpec(**json.loads(
        (first.cache_dir / "meta.json").read_text())["spec"])).problem() is None


def test_a_full_disk_while_caching_is_reported_and_leaves_nothing_behind(tiny_lm, tmp_path, monkeypatch):
    preset, lm = tiny_lm

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(A.np, "memmap", no_space)
    with pytest.raises(DataError, match="free disk space"):
        A.prepare_activations(lm, preset, 300, 50, tmp_path, 50, seed=0)
    assert not any((tmp_path / "activations").iterdir())


def test_a_half_converted_model_is_not_used(tmp_path):
    from sae_harness.data.language_model import _checkpoint_complete

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    assert not _checkpoint_complete(folder)  # no conversion.json: the conversion never finished
    (folder / "conversion.json").write_text(json.dumps({"files": {"model.safetensors": 20}}))
    assert not _checkpoint_complete(folder)  # truncated
    (folder / "conversion.json").write_text(json.dumps({"files": {"model.safetensors": 10}}))
    assert _checkpoint_complete(folder)


def test_a_model_missing_offline_is_refused_before_any_work(tiny_gemma2, tmp_path):
    from sae_harness.data.preflight import preflight

    preset = tiny_real_preset(tiny_gemma2["text"], model_name="google/gemma-2-9b")
    with pytest.raises(DataError, match="not in the Hugging Face cache"):
        preflight(preset, tmp_path)
    streamed = tiny_real_preset("Skylion007/openwebtext")
    with pytest.raises(DataError, match="hub is offline"):
        preflight(streamed, tmp_path)


@pytest.mark.e2e
def test_a_failing_eval_loses_nothing_and_the_run_still_finishes(tiny_gemma2, cache_dir, tmp_path, monkeypatch, capsys):
    import sae_harness.evals.core as core

    def broken(*args, **kwargs):
        raise RuntimeError("injected core failure")

    monkeypatch.setattr(core, "run_core", broken)
    env = tiny_environment(tiny_gemma2["text"], cache_dir)
    assert E.main([f"--out_dir={tmp_path / 'run'}"], environment=env, overrides=dict(SHORT)) == 0
    info = json.loads((tmp_path / "run" / "final_info.json").read_text())
    status = json.loads((tmp_path / "run" / "run_status.json").read_text())
    assert "core" not in info and {"training", "weights", "sparse_probing"} <= set(info)
    assert status["state"] == "finished"
    assert status["failures"]["core"] == "RuntimeError: injected core failure"
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "eval core failed: RuntimeError: injected core failure" in last


def test_a_budget_beyond_the_text_is_refused_before_the_run_folder_exists(tiny_gemma2, tmp_path, capsys):
    out = tmp_path / "run_1"
    env = replace(tiny_environment(tiny_gemma2["text"], tmp_path / "cache"), training_tokens=10**15)
    assert E.main([f"--out_dir={out}"], environment=env) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "content tokens" in last and "EXPERIMENT_TOKENS to at most" in last
    assert not out.exists()


def test_the_conversion_parses_each_gguf_once_and_restores_the_reader(tmp_path):
    import gguf
    import numpy as np

    from sae_harness.data.language_model import _each_gguf_parsed_once

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    for write in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file):
        write()
    writer.close()
    original = gguf.GGUFReader
    with _each_gguf_parsed_once():
        first, again = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert first is again  # transformers' second and third parse reuse the first
        assert [bytes(p).decode() for p in (first.fields["tokenizer.ggml.tokens"].parts[i]
                                            for i in first.fields["tokenizer.ggml.tokens"].data)] == ["a", "b", "c"]
        assert np.array_equal(np.asarray(first.tensors[0].data).reshape(-1), np.arange(6))
    assert gguf.GGUFReader is original and gguf.GGUFReader(path) is not first

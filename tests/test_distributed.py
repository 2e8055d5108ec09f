"""torchrun: 2 gloo processes train the single-process SAE (up to float reduction order), rank 0
alone writes and evaluates, and a SIGTERM'd distributed run resumes (sae_harness/hardware/distributed.py)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sae_harness.hardware.distributed import World, world_from_environment
from sae_harness.records.run_directory import CHECKPOINT

pytestmark = pytest.mark.e2e  # whole runs or subprocesses (conftest.TIERS)

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "tests" / "run_tiny_experiment.py"
# fp32 matmuls: the comparison is then about the order of float additions only
SHORT = dict(n_base=128, batch_size=64, training_tokens=64 * 40, heldout_tokens=256,
             log_every=2, checkpoint_every_steps=4, lr=4e-3, matmul_dtype="float32",
             auxk_dead_tokens=64 * 4)
TOLERANCE = 1e-4
"""Largest |difference| allowed between any single-process and 2-process weight, relative to
that tensor's largest |entry| (measured: see the closing assertions' messages)."""


def command(out_dir, cache_dir, overrides, processes=None, step_seconds=0.0):
    args = [str(RUNNER), str(out_dir), str(cache_dir), json.dumps(overrides), str(step_seconds)]
    if processes is None:
        return [sys.executable, *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", *args]


def launch(cmd):
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out[-2000:], err[-4000:])
    return out, err


def state(run_dir):
    return load_file(Path(run_dir) / "sae" / "sae_state.safetensors")


def largest_relative_difference(a, b):
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item()
               for k in b if b[k].numel())


def sigterm_after_checkpoint(out, cache_dir, overrides, min_step):
    """Start a slowed 2-process run, SIGTERM its whole process group once a checkpoint at
    `min_step` or later is on disk (as a scheduler stops the whole job), and wait for it."""
    proc = launch(command(out, cache_dir, overrides, processes=2, step_seconds=0.3))
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        path = out / CHECKPOINT
        if path.exists():
            try:
                if torch.load(path, weights_only=False)["step"] >= min_step:
                    break
            except Exception:
                pass  # being replaced
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=300)
    assert proc.returncode != 0


@pytest.fixture(scope="module")
def runs(tiny_gemma2, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    cache = root / "cache"
    single, double = root / "single", root / "double"
    finish(launch(command(single, cache, SHORT)))
    out, err = finish(launch(command(double, cache, SHORT, processes=2)))
    return dict(root=root, cache=cache, single=single, double=double, out=out, err=err)


def test_two_processes_reach_the_single_process_weights(runs):
    a, b = state(runs["double"]), state(runs["single"])
    assert set(a) == set(b)
    worst = largest_relative_difference(a, b)
    assert worst < TOLERANCE, f"largest relative weight difference {worst:.2e}"
    print(f"2 gloo processes vs 1: largest relative weight difference {worst:.2e}")


def test_rank_zero_alone_writes_and_evaluates(runs):
    double = runs["double"]
    info = json.loads((double / "final_info.json").read_text())
    single = json.loads((runs["single"] / "final_info.json").read_text())
    # the same evaluations as one process (the tiny tokenizer cannot hold absorption's prompts)
    assert set(info) == set(single) >= {"training", "core", "sparse_probing", "weights", "hierarchy"}
    status = json.loads((double / "run_status.json").read_text())
    assert status["state"] == "finished" and set(status["failures"]) == {"absorption"}
    assert info["training"]["means"]["steps"] == single["training"]["means"]["steps"] == 40
    # the logged figures are the whole batch's (all-reduced), so they match the single run
    log = [json.loads(line) for line in (double / "training_log.jsonl").read_text().splitlines()]
    one = [json.loads(line) for line in (runs["single"] / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [r["step"] for r in one]  # one writer, no duplicate lines
    assert log[-1]["reconstruction"] == pytest.approx(one[-1]["reconstruction"], rel=1e-3)
    assert log[-1]["dead_fraction_concept"] == one[-1]["dead_fraction_concept"]
    assert runs["out"].count("[run] finished") == 1


def test_a_sigtermed_distributed_run_resumes_to_the_same_weights(runs):
    out = runs["root"] / "interrupted"
    sigterm_after_checkpoint(out, runs["cache"], SHORT, 8)
    saved = torch.load(out / CHECKPOINT, weights_only=False)["step"]
    assert 8 <= saved < 40
    finish(launch(command(out, runs["cache"], SHORT, processes=2)))
    info = json.loads((out / "final_info.json").read_text())
    assert info["training"]["means"]["resumed_at_step"] == saved
    worst = largest_relative_difference(state(out), state(runs["single"]))
    assert worst < TOLERANCE, f"largest relative weight difference {worst:.2e}"


def test_torchrun_variables_describe_the_world():
    assert world_from_environment({}) == World(0, 1, 0)
    world = world_from_environment({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (world.rank, world.world_size, world.local_rank, world.distributed, world.is_main) == (3, 8, 1, True, False)


# --- streaming: no cache, each rank runs the model on its own share of the text (streaming.py) ---
STREAMED = dict(SHORT, activation_cache="off", stream_buffer_rows=256, evaluations=[])
"""A buffer of 256 rows per share: the 1,280 rows of each share pass through it in ~5 fills (the
evaluations are the cached runs' above: rank 0 alone runs them either way)."""


@pytest.fixture(scope="module")
def streamed_runs(tiny_gemma2, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_streamed")
    cache = root / "cache"
    single, double = root / "single", root / "double"
    finish(launch(command(single, cache, dict(STREAMED, stream_shares=2))))
    out, _ = finish(launch(command(double, cache, STREAMED, processes=2)))
    return dict(root=root, cache=cache, single=single, double=double, out=out)


def test_a_streamed_two_rank_run_trains_the_one_process_run_of_two_shares(streamed_runs):
    double, single = streamed_runs["double"], streamed_runs["single"]
    worst = largest_relative_difference(state(double), state(single))
    assert worst < TOLERANCE, f"largest relative weight difference {worst:.2e}"
    print(f"streamed, 2 gloo processes vs 1 process of 2 shares: largest relative weight difference {worst:.2e}")
    for run in (double, single):
        config = json.loads((run / "config.json").read_text())
        assert config["activation_cache"] == "off" and config["stream_shares"] == 2
        assert json.loads((run / "final_info.json").read_text())["training"]["means"]["activation_cache_hit"] == 0.0
    assert not (streamed_runs["cache"] / "activations").exists()  # nothing was cached
    assert "2 shares of the text, one per process" in streamed_runs["out"]
    # the held-out rows (rank 0's) are the single process's: the same held-out figures
    a = json.loads((double / "final_info.json").read_text())["training"]["means"]
    b = json.loads((single / "final_info.json").read_text())["training"]["means"]
    assert a["explained_variance"] == pytest.approx(b["explained_variance"], abs=1e-4)


@pytest.mark.slow
def test_a_streamed_run_of_one_share_differs_from_two_shares(streamed_runs, tiny_gemma2):
    """The shares are part of what a streamed run trains on (its batches): the comparison above
    is not vacuous."""
    one = streamed_runs["root"] / "one_share"
    finish(launch(command(one, streamed_runs["cache"], STREAMED)))
    assert largest_relative_difference(state(one), state(streamed_runs["single"])) > 100 * TOLERANCE


def test_a_sigtermed_streamed_two_rank_run_resumes_to_the_uninterrupted_weights(streamed_runs):
    out = streamed_runs["root"] / "interrupted"
    sigterm_after_checkpoint(out, streamed_runs["cache"], STREAMED, 12)
    saved = torch.load(out / CHECKPOINT, weights_only=False)
    assert 12 <= saved["step"] < 40
    shares = saved["stream"]
    assert [s["share"] for s in shares] == [0, 1]  # each rank's text position and buffer
    assert all(0 < s["rows_read"] <= 1280 and len(s["ids"]) for s in shares)
    finish(launch(command(out, streamed_runs["cache"], STREAMED, processes=2)))
    info = json.loads((out / "final_info.json").read_text())
    assert info["training"]["means"]["resumed_at_step"] == saved["step"]
    worst = largest_relative_difference(state(out), state(streamed_runs["double"]))
    assert worst < TOLERANCE, f"largest relative weight difference {worst:.2e}"
    print(f"streamed, SIGTERM at step {saved['step']} and resumed vs uninterrupted: {worst:.2e}")


def test_a_rank_whose_text_runs_out_first_stops_every_rank_with_one_line(tiny_gemma2, tiny_lm, tmp_path):
    """Six contexts of text: one held out, five dealt 3 / 2 to the ranks; a budget that needs
    more than share 1 holds (but not more than the text) stops both ranks at the same step."""
    from sae_harness.data.activations import iter_contexts, special_token_ids
    from sae_harness.data.streaming import dealt_pieces

    preset, lm = tiny_lm
    docs = [json.loads(line)["text"][:120] for line in
            (tiny_gemma2["text"] / "train.jsonl").read_text().splitlines()[:200]]
    special = set(special_token_ids(lm.tokenizer))

    def contexts(n_docs):
        return list(iter_contexts(iter(docs[:n_docs]), lm.tokenizer, preset.context_length))

    n_docs = next(n for n in range(1, len(docs)) if len(contexts(n)) in (6, 8))  # short documents
    text = tmp_path / "text"
    text.mkdir()
    (text / "train.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:n_docs]))
    heldout = sum(1 for t in contexts(n_docs)[0] if t not in special)
    rows = [sum(p.rows for p in dealt_pieces(iter(contexts(n_docs)), special, heldout, share, 2, 10**9))
            for share in (0, 1)]
    batch = 16
    n_train = batch * -(-(2 * rows[1] + 1) // batch)  # share 1 needs one batch more than it holds
    assert rows[0] > rows[1] and n_train <= sum(rows), rows
    overrides = dict(SHORT, activation_cache="off", stream_buffer_rows=64, batch_size=batch,
                     training_tokens=n_train, heldout_tokens=heldout, text_dir=str(text))
    proc = launch(command(tmp_path / "run", tmp_path / "cache", overrides, processes=2))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    step = rows[1] // (batch // 2)
    assert f"share 1 of 2's text ran out at step {step}" in err, err[-3000:]
    assert f"another rank's share of the text ran out at step {step}" in err, err[-3000:]
    assert not (tmp_path / "run" / "sae").exists()

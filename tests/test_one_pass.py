"""Several SAEs from one pass of the model (sae_harness/training/one_pass.py): each gets the
batches a streamed run of its own gets, so its weights are that run's."""

import json

import pytest
import torch
from safetensors.torch import load_file

from sae_harness.data.language_model import load_language_model
from sae_harness.data.streaming import StreamingBatches, TensorShare
from sae_harness.training.one_pass import SharedShare, sae_lens_job, train_in_one_pass, trainer_job
from test_distributed import SHORT, TOLERANCE, command, finish, largest_relative_difference, launch


class CountingShare(TensorShare):
    def __init__(self, rows):
        super().__init__(rows)
        self.chunks_made = 0

    def read(self, start_row):
        for chunk in super().read(start_row):
            self.chunks_made += 1
            yield chunk


@pytest.mark.unit
def test_a_shared_share_is_read_once_and_gives_each_seed_its_own_batches():
    rows = torch.randn(1000, 3)
    source = CountingShare(rows)
    shared = SharedShare(source, 2)
    streams = [StreamingBatches([shared.reader(i, 1000)], 1, 120, 20, seed=seed, device="cpu") for i, seed in enumerate((4, 9))]
    together = [[], []]
    for _ in range(45):
        for i, stream in enumerate(streams):
            together[i].append(stream._next_batch(0))
        assert shared.chunks_held <= 3  # a chunk both readers have is dropped
    for i, seed in enumerate((4, 9)):
        counted = CountingShare(rows)
        alone = StreamingBatches([counted], 1, 120, 20, seed=seed, device="cpu")
        assert all(torch.equal(a, b) for a, b in zip(together[i], alone.iterate(0, 45)))
        assert source.chunks_made == counted.chunks_made  # two readers: the chunks of one
    assert not torch.equal(together[0][5], together[1][5])  # two seeds, two shuffles


ONE_PASS = dict(SHORT, activation_cache="off", stream_buffer_rows=256)
NO_EVALS = {"evaluations": []}


@pytest.mark.e2e
def test_sae_trained_in_one_pass_equal_separate_streamed_runs(tiny_gemma2, tmp_path):
    import experiment as E
    from sae_harness.records.frontier import NORM_BATCHES, train_sae_lens
    from tiny_gemma2 import tiny_environment, tiny_real_preset

    points = {"baseline_seed0": dict(variant="baseline", seed=0),
              "default_seed1": dict(variant=E.DEFAULT_VARIANT, seed=1)}
    for name, point in points.items():
        finish(launch(command(tmp_path / name, tmp_path / "cache", dict(ONE_PASS, **point, **NO_EVALS))))
    config = json.loads((tmp_path / "baseline_seed0" / "config.json").read_text())
    preset = tiny_real_preset(tiny_gemma2["text"], model_dtype=config["preset"]["model_dtype"])
    env = tiny_environment(tiny_gemma2["text"], tmp_path / "cache")
    lm = load_language_model(preset, tmp_path / "unused_cache")
    overrides = {k: v for k, v in ONE_PASS.items() if k not in ("activation_cache", "stream_buffer_rows")}
    cfgs = {name: E.configure(point["variant"], env.preset.name, None, dict(overrides, seed=point["seed"]))[0]
            for name, point in points.items()}
    cfg = cfgs["baseline_seed0"]
    jobs = [trainer_job(name, c, E.make_trainer, "cpu") for name, c in cfgs.items()]
    jobs.append(sae_lens_job("topk_k8", "topk", 8, lm.model.cfg.d_model, cfg, tmp_path / "topk"))
    heldout = train_in_one_pass(lm, preset, cfg.training_tokens, cfg.heldout_tokens, cfg.batch_size,
                                jobs, buffer_rows=256)
    assert heldout.shape == (cfg.heldout_tokens, lm.model.cfg.d_model)
    for job in jobs[:2]:
        sae, summary = job.result
        separate = load_file(tmp_path / job.name / "sae" / "sae_state.safetensors")
        ours = {k: v for k, v in sae.state_dict().items() if k in separate}
        assert set(ours) == set(separate)
        worst = largest_relative_difference(ours, separate)
        assert worst < TOLERANCE, f"{job.name}: largest relative weight difference {worst:.2e}"
        log = (tmp_path / job.name / "training_log.jsonl").read_text().splitlines()
        assert summary["final_reconstruction_loss"] == pytest.approx(json.loads(log[-1])["reconstruction"], rel=1e-4)
    # SAE-Lens' point against its trainer alone on the same seed's stream
    from sae_harness.data.activations import prepare_activations

    alone = prepare_activations(lm, preset, (cfg.total_steps + NORM_BATCHES) * cfg.batch_size,
                                cfg.heldout_tokens, tmp_path / "c2",
                                cfg.batch_size, cfg.seed, stream_buffer_rows=256, use_cache=False)
    single = train_sae_lens("topk", 8, lm.model.cfg.d_model, cfg.n_base,
                            alone.train.iterate(0, cfg.total_steps + NORM_BATCHES), cfg.total_steps,
                            cfg.batch_size, cfg.lr, cfg.seed, tmp_path / "topk_alone")
    worst = largest_relative_difference(jobs[2].result.state_dict(), single.state_dict())
    assert worst < TOLERANCE, f"SAE-Lens topk: largest relative weight difference {worst:.2e}"


@pytest.mark.unit
def test_the_benchmark_trains_build_frontiers_points():
    import build_frontier
    import frontier_one_pass

    for name in ("RELU_L1", "TOPK_K", "MATRYOSHKA_K", "MATRYOSHKA_WIDTHS"):
        assert getattr(frontier_one_pass, name) == getattr(build_frontier, name), name


@pytest.mark.e2e
def test_a_streamed_frontier_trains_its_points_in_one_pass_and_scores_each(tiny_gemma2, tmp_path, capsys):
    from dataclasses import replace

    import build_frontier
    from tiny_gemma2 import tiny_environment

    env = replace(tiny_environment(tiny_gemma2["text"], tmp_path / "cache"), activation_cache="off",
                  stream_buffer_rows=256)
    small = {k: v for k, v in SHORT.items() if k != "l1_base"}
    root = tmp_path / "run_0"
    build_frontier.main(["relu", "topk", "--l1=0.08", "--k=8", "--no-seeds", f"--root={root}"],
                        environment=env, overrides=small)
    out = capsys.readouterr().out
    assert "[frontier] one pass of the model for 2 SAEs: relu_l1_0.08, topk_k8" in out
    frontier = json.loads((root / "frontier.json").read_text())
    assert [p["name"] for p in frontier["points"]] == ["relu_l1_0.08", "topk_k8"]
    for name in ("relu_l1_0.08", "topk_k8"):
        info = json.loads((root / "frontier" / name / "final_info.json").read_text())
        assert info["training"]["means"]["one_pass_saes"] == 2.0
        assert {"core", "sparse_probing"} <= set(info), name  # scored like a run
    config = json.loads((root / "frontier" / "relu_l1_0.08" / "config.json").read_text())
    assert config["config"]["l1_base"] == 0.08 and config["config"]["n_base"] == SHORT["n_base"]
    assert not (tmp_path / "cache" / "activations").exists()  # streamed: nothing cached


@pytest.mark.e2e
def test_one_pass_under_torchrun_trains_the_one_process_pass_of_as_many_shares(tiny_gemma2, tmp_path):
    import sys

    from test_distributed import REPO

    overrides = {k: v for k, v in ONE_PASS.items() if k != "activation_cache"}
    runner = str(REPO / "tests" / "run_tiny_one_pass.py")
    one = [sys.executable, runner, str(tmp_path / "one"), "2", json.dumps(overrides)]
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", runner,
           str(tmp_path / "two"), "2", json.dumps(overrides)]
    for cmd in (one, two):
        finish(launch(cmd))
    for name in ("baseline_seed0", "default_seed1"):
        a, b = load_file(tmp_path / "two" / f"{name}.safetensors"), load_file(tmp_path / "one" / f"{name}.safetensors")
        worst = largest_relative_difference(a, b)
        assert worst < TOLERANCE, f"{name}: largest relative weight difference {worst:.2e}"

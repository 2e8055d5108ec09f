"""The benchmark scripts run (figures are printed, never asserted: timings are not tests)."""

import re
from types import SimpleNamespace

import pytest


pytestmark = pytest.mark.e2e  # whole runs or subprocesses (conftest.TIERS)


def test_gpu_readiness_script_runs_at_toy_size_on_cpu(tiny_gemma2, capsys, monkeypatch):
    import gpu_readiness
    import transformer_lens.loading_from_pretrained as loading

    # the script builds Gemma-2-2B's own widths: TransformerLens' table as shipped, not the fixture's
    table = loading.convert_hf_model_config
    monkeypatch.setattr(loading, "convert_hf_model_config", getattr(table, "original", table))

    gpu_readiness.main(["--toy", "--no-streamed"])
    out = capsys.readouterr().out
    assert re.search(r"activations at layer 1: [\d,]+ tokens/s .* ideal [\d,]+ tokens/s", out)
    assert len(re.findall(r"SAE training d_sae \d+ \(\+\d+ concept\), batch 64: [\d,]+ tokens/s", out)) == 2


@pytest.mark.slow
def test_gpu_readiness_streamed_torchrun_runs_at_toy_size_on_cpu(tiny_gemma2, capfd):
    """Part 3, the streamed torchrun run, as 2 gloo ranks (~50 s: each builds Gemma-2-2B's widths)."""
    import gpu_readiness

    gpu_readiness.streamed_torchrun(gpu_readiness.parse_arguments(["--toy"]), "cpu")
    out = capfd.readouterr().out
    for rank in (0, 1):
        assert re.search(rf"\[rank {rank}\] streamed: model [\d,]+ tokens/s .* training [\d,]+ global "
                         r"tokens/s .* 8 steps of 64", out), out[-3000:]


def test_our_trainer_plugs_into_the_reference_benchmark():
    import perf_ref

    args = SimpleNamespace(d_in=32, d_sae=128, batch=64, k=8, warmup=2, steps=2, autocast="none")
    pool = perf_ref.make_pool(2, args.batch, args.d_in, "cpu")
    for name in ("trainer_factory:hierarchical", "trainer_factory:hierarchical_fp32",
                 "trainer_factory:hierarchical_fp32_trained", "trainer_factory:hierarchical_fp32_matched_l0"):
        steps_per_s, _, cpu_util = perf_ref.time_one(name, args, pool, "cpu")
        assert steps_per_s > 0 and cpu_util > 0


def test_step_flop_count_matches_the_dense_matmuls():
    import run_benchmarks

    # base: encoder fwd + weight grad, decoder fwd + 2 grads; concept encoder fwd (its TopK
    # gradient is k of n_concept entries, sae_kernels.py)
    assert run_benchmarks.step_flops(256, 2048, 512, 4096) == 2 * 4096 * (
        2 * 256 * 2048 + 3 * 2048 * 256 + 1 * 2048 * 512)

#!/usr/bin/env python
"""Benchmarks of the harness on this machine; prints measured figures and ratios, asserts nothing.

    python bench/run_benchmarks.py                  # everything, CPU defaults (~8 min here)
    python bench/run_benchmarks.py --only trainers  # one section: matmul, trainers, activations, runs

Sections:
  matmul       this machine's matmul FLOP/s (fp32 and bf16, 1 thread): the yardstick
  trainers     our training step vs dictionary_learning 0.1.0 (Standard, TopK) and SAE-Lens'
               TopK step, same shapes, one process (bench/perf_ref.py, 1 thread, CPU-s/step);
               achieved FLOP/s of our step as a fraction of the matmul yardstick
  activations  residual-stream tokens/s on the embedded model: early exit at the hook layer
               (what training uses) vs a full forward vs TransformerLens run_with_cache
  runs         wall time of an embedded run with cold caches (activations, SAE-Bench artifacts;
               the converted model is reused) and of the same run again, with peak memory

Compare only figures from one invocation: the machine is shared and timings drift.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DEPS = REPO / ".bench_deps"


def header(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


# ---------------------------------------------------------------------------------------------
def matmul_flops(threads: int = 1) -> dict[str, float]:
    """Best-of-5 FLOP/s of a (4096 x 2048) @ (2048 x 512) matmul per dtype."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    found = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(4096, 2048, dtype=dtype), torch.randn(2048, 512, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(5):
            start = time.process_time()
            a @ b
            best = min(best, time.process_time() - start)
        found[str(dtype).split(".")[1]] = 2 * 4096 * 2048 * 512 / best
    torch.set_num_threads(previous)
    return found


def step_flops(d_in: int, n1: int, n2: int, batch: int) -> float:
    """Dense matmul FLOPs of one training step of our SAE (no input gradient is needed):
    base encoder forward + weight gradient (4BdN1), base decoder forward + both gradients
    (6BN1d), concept encoder likewise (6BN1N2); the TopK concept decoder is a k-row gather."""
    return 4 * batch * d_in * n1 + 6 * batch * n1 * d_in + 6 * batch * n1 * n2


def ensure_bench_deps() -> None:
    if (BENCH_DEPS / "dictionary_learning").is_dir():
        return
    print(f"installing dictionary_learning 0.1.0 into {BENCH_DEPS} (once, without dependencies)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(BENCH_DEPS), "-r", str(REPO / "requirements-bench.txt")], check=True)


def trainers(args, yardstick: dict[str, float]) -> None:
    header("trainers: CPU-seconds per step, 1 thread (bench/perf_ref.py, one process)")
    ensure_bench_deps()
    names = ["dl_standard", "dl_top_k", "saelens_factory:topk", "plain_topk_sparse",
             "trainer_factory:hierarchical", "trainer_factory:hierarchical_fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "perf.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench"), str(BENCH_DEPS)])}
        cmd = [sys.executable, str(REPO / "bench" / "perf_ref.py"), "--threads", "1",
               "--d-in", str(args.d_in), "--d-sae", str(args.d_sae), "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", "3", "--reps", str(args.reps),
               "--trainers", *names, "--json-out", str(out)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode:
            print(result.stdout[-2000:], result.stderr[-3000:])
            raise SystemExit("error: perf_ref.py failed (output above)")
        report = json.loads(out.read_text())["results"]
    cpu = {name: report[name]["cpu_s_per_step_median"] for name in names}
    ref = cpu["dl_top_k"]
    print(f"shapes: d_in {args.d_in}, base width {args.d_sae} (+{args.d_sae // 4} concept for ours), "
          f"batch {args.batch}; median of {args.reps} reps x {args.steps} steps")
    print(f"{'trainer':36s} {'CPU-s/step':>10s} {'x DL TopK':>10s} {'tokens/s':>10s}")
    for name in names:
        print(f"{name:36s} {cpu[name]:10.3f} {cpu[name] / ref:10.2f} {args.batch / cpu[name]:10.0f}")
    flops = step_flops(args.d_in, args.d_sae, args.d_sae // 4, args.batch)
    for name, dtype in (("trainer_factory:hierarchical", "bfloat16"),
                        ("trainer_factory:hierarchical_fp32", "float32")):
        achieved = flops / cpu[name]
        print(f"{name}: {flops / 1e9:.1f} GFLOP/step -> {achieved / 1e9:.0f} GFLOP/s = "
              f"{achieved / yardstick[dtype]:.0%} of this machine's {dtype} matmul rate")


# ---------------------------------------------------------------------------------------------
def activations(args) -> None:
    import torch

    from sae_harness.activations import iter_contexts
    from sae_harness.language_model import load_language_model, residual_stream
    from sae_harness.presets import PRESETS, default_cache_dir
    from sae_harness.text_sources import documents

    header("activations: residual-stream tokens/s, embedded model (Gemma-3-270M, bf16, CPU)")
    preset = PRESETS["embedded"]
    lm = load_language_model(preset, Path(os.environ.get("EXPERIMENT_CACHE") or default_cache_dir()))
    rows = [row for _, row in zip(range(args.contexts), iter_contexts(documents(preset), lm.tokenizer,
                                                                         preset.context_length))]
    tokens = torch.tensor(rows)
    n = tokens.numel()

    def rate(fn) -> float:
        with torch.inference_mode():
            fn()
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - start)
        return n / best

    early = rate(lambda: residual_stream(lm.model, tokens, preset.hook_layer))
    full = rate(lambda: lm.model(tokens))
    cached = rate(lambda: lm.model.run_with_cache(tokens))
    print(f"{n} tokens ({args.contexts} contexts x {preset.context_length}), {torch.get_num_threads()} threads, best of 3")
    print(f"early exit at layer {preset.hook_layer} (training):   {early:9.0f} tokens/s")
    print(f"full forward (logits):                 {full:9.0f} tokens/s   early exit is {early / full:.1f}x")
    print(f"TransformerLens run_with_cache (all):  {cached:9.0f} tokens/s   early exit is {early / cached:.1f}x")


# ---------------------------------------------------------------------------------------------
def runs(args) -> None:
    from sae_harness.presets import default_cache_dir

    header(f"runs: embedded experiment, {args.run_tokens} training tokens, cold caches then warm")
    user_cache = Path(os.environ.get("EXPERIMENT_CACHE") or default_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        if (user_cache / "models").is_dir():  # reuse the converted model: conversion is once per machine
            (cache / "models").symlink_to(user_cache / "models")
        env = {**os.environ, "EXPERIMENT_PRESET": "embedded", "EXPERIMENT_CACHE": str(cache),
               "EXPERIMENT_TOKENS": str(args.run_tokens), "EXPERIMENT_VARIANT": args.variant,
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        timings = []
        for label in ("first (cold caches)", "second (warm caches)"):
            out = Path(tmp) / f"run_{len(timings)}"
            start = time.perf_counter()
            result = subprocess.run([sys.executable, str(REPO / "experiment.py"), f"--out_dir={out}"],
                                    env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if result.returncode:
                print(result.stderr[-3000:])
                raise SystemExit(f"error: the {label} run failed (stderr above)")
            status = json.loads((out / "run_status.json").read_text())
            timings.append(seconds)
            print(f"{label:22s} {seconds:7.1f} s wall, peak memory {status.get('peak_rss_gb', float('nan')):.1f} GB")
        print(f"second / first = {timings[1] / timings[0]:.0%}")


# ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["matmul", "trainers", "activations", "runs"], nargs="*")
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--run-tokens", type=int, default=100_000)
    parser.add_argument("--variant", default="tuned_cosine")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    only = set(args.only or ["matmul", "trainers", "activations", "runs"])

    header("matmul yardstick, 1 thread (best of 5, CPU time)")
    yardstick = matmul_flops()
    for dtype, flops in yardstick.items():
        print(f"{dtype:9s} {flops / 1e9:7.0f} GFLOP/s")
    if "trainers" in only:
        trainers(args, yardstick)
    if "activations" in only:
        activations(args)
    if "runs" in only:
        runs(args)


if __name__ == "__main__":
    main()

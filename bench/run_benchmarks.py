#!/usr/bin/env python
"""Benchmarks of the harness on this machine; prints measured figures and ratios, asserts nothing.

    python bench/run_benchmarks.py                  # everything, CPU defaults (~15 min here)
    python bench/run_benchmarks.py --only trainers  # one section (names below)
    python bench/run_benchmarks.py --emulate-no-bf16 --only precision runs
                                                    # as on a CPU without native bf16 (below)

Sections:
  matmul       this machine's matmul FLOP/s (fp32 and bf16, 1 thread): the yardstick
  precision    the run-start probe (sae_harness/hardware/precision.py) at the embedded run's shapes: what
               a run on this machine chooses, and why
  kernels      the SAE's gathered products vs dense ones by density of z1 (the measurement
               behind sae_kernels.SPARSE_DENSITY_MAX)
  trainers     our training step vs dictionary_learning 0.1.0 (Standard, TopK) and SAE-Lens'
               TopK step, same shapes, one process (bench/perf_ref.py, 1 thread, CPU-s/step);
               achieved FLOP/s of our step as a fraction of the matmul yardstick
  activations  residual-stream tokens/s on the embedded model: early exit at the hook layer
               (what training uses) vs a full forward vs TransformerLens run_with_cache
  distributed  training tokens/s of our trainer with 1 and 2 torchrun processes (gloo, CPU, one
               thread each, embedded shapes, random activations): what DDP costs and gains here
  runs         wall time of an embedded run with cold caches (activations, SAE-Bench artifacts;
               the converted model is reused unless --cold-model) and of a run of another variant
               with warm caches, phase by phase, with peak memory

--emulate-no-bf16 reruns this script with oneDNN, MKL and ATen held to AVX2
(ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2, ATEN_CPU_CAPABILITY=avx2): on a CPU with
AVX512_BF16 that makes torch's bf16 matmul as slow as on one without it (measured on a Zen 4
EPYC: 0.66 GFLOP/s against 113 in fp32, 2 threads), so both kinds of machine can be measured
on one. fp32 then runs at AVX2 speed, still faster than an older CPU's (a Zen 3 EPYC: 75).

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
NO_BF16_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
               "ATEN_CPU_CAPABILITY": "avx2"}
"""Environment that makes a CPU with native bf16 behave as one without (module docstring)."""


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


def step_flops(d_in: int, n_base: int, n_concept: int, batch: int) -> float:
    """Matmul FLOPs of one training step of our SAE with dense base latents (sae_kernels.py):
    base encoder forward + weight gradient (4 B d n_base), base decoder forward + both gradients
    (6 B n_base d), concept encoder forward (2 B n_base n_concept; its TopK gradient is k of
    n_concept entries per token);
    the TopK concept decoder is a k-row gather."""
    return 4 * batch * d_in * n_base + 6 * batch * n_base * d_in + 2 * batch * n_base * n_concept


def ensure_bench_deps() -> None:
    if (BENCH_DEPS / "dictionary_learning").is_dir():
        return
    print(f"installing dictionary_learning 0.1.0 into {BENCH_DEPS} (once, without dependencies)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                    str(BENCH_DEPS), "-r", str(REPO / "requirements-bench.txt")], check=True)


def trainers(args, yardstick: dict[str, float]) -> None:
    header("trainers: CPU-seconds per step, 1 thread (bench/perf_ref.py, one process)")
    ensure_bench_deps()
    ours = ["hierarchical", "hierarchical_trained", "hierarchical_matched_l0"]  # + "_fp32" forms
    with_bf16 = yardstick["bfloat16"] > yardstick["float32"]
    if not with_bf16:  # at ~1 GFLOP/s a bf16 step takes ~30 s: a run would choose fp32 here
        print(f"bf16 matmuls run at {yardstick['bfloat16'] / 1e9:.1f} GFLOP/s here against fp32 "
              f"{yardstick['float32'] / 1e9:.0f}: our bf16 trainers are left out (a run chooses fp32)")
    from sae_harness.hardware.cpu_heap import GLIBC_TUNABLES_FOR_REUSE
    from sae_harness.data.presets import read_heap_choice

    heap = read_heap_choice()
    print(f"CPU heap for every trainer timed: {heap} (EXPERIMENT_CPU_HEAP; a run's default is reuse: "
          "sae_harness/hardware/cpu_heap.py)")
    names = ["dl_standard", "dl_top_k", "saelens_factory:topk", "plain_topk_sparse",
             *[f"trainer_factory:{name.replace('hierarchical', 'hierarchical_fp32')}" for name in ours],
             *([f"trainer_factory:{name}" for name in ours] if with_bf16 else [])]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "perf.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "bench"), str(BENCH_DEPS)])}
        if heap == "reuse" and "glibc.malloc." not in env.get("GLIBC_TUNABLES", ""):
            # as a run: the caller's own malloc tunables are left alone, others kept beside ours
            env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"),
                                                            GLIBC_TUNABLES_FOR_REUSE]))
        cmd = [sys.executable, str(REPO / "bench" / "perf_ref.py"), "--threads", "1",
               "--d-in", str(args.d_in), "--d-sae", str(args.d_sae), "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", "3", "--reps", str(args.reps),
               "--trainers", *names, "--json-out", str(out)]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode:
            print(result.stdout[-2000:], result.stderr[-3000:])
            raise SystemExit("error: perf_ref.py failed (output above)")
        for line in result.stderr.splitlines():
            if line.startswith("[trainer_factory]"):
                print(line)
        report = json.loads(out.read_text())["results"]
    cpu = {name: report[name]["cpu_s_per_step_median"] for name in names}
    ref = cpu["dl_top_k"]
    print(f"shapes: d_in {args.d_in}, base width {args.d_sae} (+{args.d_sae // 4} concept for ours), "
          f"batch {args.batch}; median of {args.reps} reps x {args.steps} steps")
    print(f"{'trainer':36s} {'CPU-s/step':>10s} {'x DL TopK':>10s} {'tokens/s':>10s}")
    for name in names:
        print(f"{name:36s} {cpu[name]:10.3f} {cpu[name] / ref:10.2f} {args.batch / cpu[name]:10.0f}")
    flops = step_flops(args.d_in, args.d_sae, args.d_sae // 4, args.batch)
    print("(*_trained: timed after training on the same synthetic pool; the L0 it reached is "
          "printed above; on these data a ReLU SAE settles at ~450-600 of 2048 latents, denser "
          "than the ~50-170 of the embedded runs, so the dense products still run; *_matched_l0: "
          "that state with every base encoder bias moved so that the TopK trainers' k (64) "
          "latents a token fire; it rises as the timed steps train: ~120 after 15)")
    for name, dtype in (("trainer_factory:hierarchical", "bfloat16"),
                        ("trainer_factory:hierarchical_fp32", "float32")):
        if name not in cpu:
            continue
        achieved = flops / cpu[name]
        print(f"{name}: {flops / 1e9:.1f} GFLOP/step -> {achieved / 1e9:.0f} GFLOP/s = "
              f"{achieved / yardstick[dtype]:.0%} of this machine's {dtype} matmul rate")


# ---------------------------------------------------------------------------------------------
def precision(args) -> None:
    import torch

    from sae_harness.hardware.machine import cpu_bf16_flags, cpu_name
    from sae_harness.hardware.precision import ProbeShapes, choose_precision

    header("precision: the run-start probe at the embedded run's shapes")
    print(f"CPU: {cpu_name()}; native bf16 flags: {cpu_bf16_flags() or 'none'}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          + ("; EMULATING a CPU without native bf16" if os.environ.get("ONEDNN_MAX_CPU_ISA") else ""))
    started = time.perf_counter()
    choice = choose_precision("cpu", "auto", "auto", "auto",
                              ProbeShapes(model=(16 * 128, 640, 2048), sae=(1024, 640, 2048)))
    print(f"probe took {time.perf_counter() - started:.2f} s")
    print(f"chosen: model {choice.model_dtype}, SAE matmuls {choice.sae_matmul_dtype}")
    print(f"why: {choice.reason}")


def kernels(args, yardstick: dict[str, float]) -> None:
    import torch
    import torch.nn.functional as F

    from sae_harness.training.sae_kernels import ActiveLatents, latent_matmul

    bf16 = yardstick["bfloat16"] > yardstick["float32"]  # else bf16 dense products are hopeless
    header("kernels: z1 @ W (B 1024, n_base 2048, d 640), forward + backward, 1 thread, best of 5: "
           "dense in fp32" + (" and in bf16 (autocast, as a bf16 run's dense path)" if bf16 else "")
           + " vs gathered (always fp32)")
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    W = torch.randn(2048, 640, generator=generator, requires_grad=True)
    grad = torch.randn(1024, 640, generator=generator)

    def seconds(fn):
        fn()
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    print(f"{'density':>8s} {'dense fp32 s':>13s} {'gathered s':>11s} {'gathered/fp32':>14s}"
          + (f" {'dense bf16 s':>13s} {'gathered/bf16':>14s}" if bf16 else ""))
    for density in (0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5):
        pre = torch.randn(1024, 2048, generator=generator)
        z = F.relu(pre - torch.quantile(pre[0], 1 - density)).requires_grad_()
        active = ActiveLatents.of(z, density_max=1.0)

        def run(which, dtype=None):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                out = latent_matmul(z, W, which)
            out.float().backward(grad)
            W.grad = z.grad = None

        dense, gathered = seconds(lambda: run(None)), seconds(lambda: run(active))
        line = f"{density:8.2f} {dense:13.4f} {gathered:11.4f} {gathered / dense:14.2f}"
        if bf16:
            dense_bf16 = seconds(lambda: run(None, torch.bfloat16))
            line += f" {dense_bf16:13.4f} {gathered / dense_bf16:14.2f}"
        print(line)
    torch.set_num_threads(os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
def activations(args) -> None:
    import torch

    from sae_harness.data.activations import iter_contexts
    from sae_harness.data.language_model import load_language_model, residual_stream
    from sae_harness.data.presets import PRESETS, default_cache_dir
    from sae_harness.data.text_sources import documents

    from dataclasses import replace

    from sae_harness.data.language_model import locate_model, model_dimensions
    from sae_harness.hardware.precision import precision_for_run
    from sae_harness.data.presets import read_precision

    cache = Path(os.environ.get("EXPERIMENT_CACHE") or default_cache_dir())
    preset = PRESETS["embedded"]
    location = locate_model(preset, cache)
    precision = precision_for_run(preset, model_dimensions(location), read_precision(), "auto", 1024, 2048)
    preset = replace(preset, model_dtype=precision.model_dtype)
    header(f"activations: residual-stream tokens/s, embedded model (Gemma-3-270M, "
           f"{preset.model_dtype} as a run here chooses, CPU)")
    lm = load_language_model(preset, cache, location)
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
SECTIONS = ("matmul", "precision", "kernels", "trainers", "activations", "runs", "distributed")
PHASES = ("model_conversion", "model_load", "activations", "training", "weights", "hierarchy",
          "core", "sparse_probing", "absorption", "total")


def runs(args) -> None:
    from sae_harness.data.presets import default_cache_dir

    header(f"runs: embedded experiment, {args.run_tokens} training tokens: {args.variant} with cold "
           f"caches, then {args.second_variant} with warm caches")
    user_cache = Path(os.environ.get("EXPERIMENT_CACHE") or default_cache_dir())
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        if (user_cache / "models").is_dir() and not args.cold_model:
            (cache / "models").symlink_to(user_cache / "models")  # conversion is once per machine
        env = {**os.environ, "EXPERIMENT_PRESET": "embedded", "EXPERIMENT_CACHE": str(cache),
               "EXPERIMENT_TOKENS": str(args.run_tokens), "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1"}
        table = {}
        for label, variant in (("first (cold caches)", args.variant),
                               ("second (warm caches)", args.second_variant)):
            out = Path(tmp) / f"run_{len(table)}"
            start = time.perf_counter()
            result = subprocess.run([sys.executable, str(REPO / "experiment.py"), f"--out_dir={out}"],
                                    env={**env, "EXPERIMENT_VARIANT": variant}, capture_output=True,
                                    text=True)
            seconds = time.perf_counter() - start
            if result.returncode:
                print(result.stderr[-3000:])
                raise SystemExit(f"error: the {label} run failed (stderr above)")
            status = json.loads((out / "run_status.json").read_text())
            table[label] = {**status.get("phase_seconds", {}), "wall": seconds,
                            "peak_rss_gb": status.get("peak_rss_gb", float("nan"))}
            precision = json.loads((out / "config.json").read_text())["precision"]
        print(f"precision: model {precision['model_dtype']}, SAE matmuls {precision['sae_matmul_dtype']}")
        labels = list(table)
        print(f"{'phase (s)':18s}" + "".join(f"{label:>24s}" for label in labels))
        for phase in (*PHASES, "wall", "peak_rss_gb"):
            print(f"{phase:18s}" + "".join(f"{table[label].get(phase, float('nan')):24.1f}"
                                           for label in labels))
        print(f"second / first = {table[labels[1]]['wall'] / table[labels[0]]['wall']:.0%}")


def distributed_training(args) -> None:
    header("distributed: training tokens/s, torchrun with 1 and 2 processes (gloo, 1 thread each; "
           f"d_in 640, n_base {args.d_sae}, global batch 512, {args.ddp_steps} steps)")
    for dtype in ("float32", "bfloat16"):
        rates = {}
        for processes in (1, 2):
            result = subprocess.run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={processes}", str(REPO / "bench" / "distributed_training.py"),
                 str(args.ddp_steps), "512", "640", str(args.d_sae), dtype],
                env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
            if result.returncode:
                print(result.stderr[-2000:])
                raise SystemExit(f"error: the {processes}-process benchmark failed (stderr above)")
            rates[processes] = json.loads(result.stdout.strip().splitlines()[-1])["tokens_per_second"]
        print(f"{dtype:9s} 1 process {rates[1]:8.0f} tokens/s, 2 processes {rates[2]:8.0f} tokens/s "
              f"({rates[2] / rates[1]:.2f}x)")


# ---------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=SECTIONS)
    parser.add_argument("--emulate-no-bf16", action="store_true",
                        help="run as on a CPU without native bf16 (module docstring)")
    parser.add_argument("--cold-model", action="store_true",
                        help="runs: convert the model again in the cold run (a fresh machine)")
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--contexts", type=int, default=16)
    parser.add_argument("--run-tokens", type=int, default=500_000)
    parser.add_argument("--variant", default="tuned_cosine")
    parser.add_argument("--second-variant", default="baseline")
    parser.add_argument("--ddp-steps", type=int, default=30)
    args = parser.parse_args()
    if args.emulate_no_bf16 and not os.environ.get("ONEDNN_MAX_CPU_ISA"):
        argv = [a for a in sys.argv[1:] if a != "--emulate-no-bf16"]
        raise SystemExit(subprocess.run([sys.executable, __file__, *argv],
                                        env={**os.environ, **NO_BF16_ENV}).returncode)
    only = set(args.only or SECTIONS)

    header("matmul yardstick, 1 thread (best of 5, CPU time)")
    yardstick = matmul_flops()
    for dtype, flops in yardstick.items():
        print(f"{dtype:9s} {flops / 1e9:7.0f} GFLOP/s")
    if "precision" in only:
        precision(args)
    if "kernels" in only:
        kernels(args, yardstick)
    if "trainers" in only:
        trainers(args, yardstick)
    if "activations" in only:
        activations(args)
    if "runs" in only:
        runs(args)
    if "distributed" in only:
        distributed_training(args)


if __name__ == "__main__":
    main()

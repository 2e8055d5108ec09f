"""Which dtype the language model and the SAE's matmuls use on this machine: measured, never assumed.

    precision = choose_precision(device, requested, model_dtype, matmul_dtype, shapes)

On CUDA both run in bf16. On a CPU, bf16 is chosen only where it is really faster here: a
short probe times one matmul of each dtype at the run's own shapes (the language model's MLP
input projection for a forward batch, the SAE's encoder for a training batch). CPUs with native
bf16 (AVX512_BF16, AMX) run them a few times faster in bf16 than in fp32; CPUs without it (x86
before Zen 4 / Sapphire Rapids) run bf16 two orders of magnitude slower, so a wrong guess costs
hours (the rates: docs/BENCHMARKS.md, "Figures behind the code's choices"). The CPU's flags
are read and recorded beside the measurement; the measurement decides.

The probe takes a fraction of a second: fp32 at the full shape, then bf16 on a slice of rows
first, and at the full shape only if the slice is not already far slower than fp32. Each timing is
the best of a few calls after WARMUP_CALLS untimed ones: in a fresh process with AMX the first
bf16 calls run far below the steady rate, and one early call, timed alone, once made a run
choose an fp32 model there (the warm-up rates in the same section). Where the verdict
contradicts the CPU's flags (native bf16 measured slower, or no flag and bf16 measured faster)
the probe measures once more and that second measurement decides; the reason line shows both.

`requested` is EXPERIMENT_PRECISION (auto | float32 | bfloat16): auto lets the rule above
choose, unless the preset or Config pins a dtype (a test fixture does); float32 or bfloat16
forces both. A forced bf16 on a CPU where it measured slower gets a one-line warning.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from sae_harness.errors import ConfigurationError
from sae_harness.hardware.machine import cpu_bf16_flags, cpu_name
from sae_harness.records.cache_keys import key_digest

PRECISIONS = ("auto", "float32", "bfloat16")
"""Values of EXPERIMENT_PRECISION, of Preset.model_dtype and of Config.matmul_dtype."""

BF16_MIN_SPEEDUP = 1.25
"""bf16 is chosen on a CPU only when it measured at least this many times fp32's speed (fp32
keeps more precision; real CPUs are far from this line: ~2.7x with native bf16, ~0.005x
without, so noise in the probe does not flip the choice)."""


PROBE_MAX_ROWS = 256
"""Rows timed at most: matmul speed has levelled off by then, and the probe stays short."""
PROBE_SLICE = (64, 256)
"""(rows, columns) of the first, small bf16 timing (~0.1 s even where bf16 is slow), so that a
slow bf16 is found without a full-size matmul."""
SLOW_SLICE_RATIO = 0.25
"""A bf16 slice below this fraction of fp32's speed is slow enough: no full-size bf16 timing."""
WARMUP_CALLS = 2
"""Untimed calls before each timing (a process's first bf16 calls on AMX are slow; module doc)."""
PROBE_VERSION = 2
"""Part of the kept verdict's key: verdicts of an earlier probe (1: the bf16 slice timed once)
are not reused."""


@dataclass(frozen=True)
class MatmulSpeed:
    """Measured speed of (m x k) @ (k x n) in both dtypes on this machine, in GFLOP/s."""

    shape: tuple[int, int, int]
    float32_gflops: float
    bfloat16_gflops: float
    bfloat16_shape: tuple[int, int, int]
    """The bf16 matmul that was timed: `shape`, or the PROBE_SLICE when that was enough."""
    threads: int

    @property
    def bf16_speedup(self) -> float:
        return self.bfloat16_gflops / self.float32_gflops

    def describe(self) -> str:
        shape = "x".join(map(str, self.shape))
        bf16_at = "" if self.bfloat16_shape == self.shape else \
            " at " + "x".join(map(str, self.bfloat16_shape))
        return (f"bf16 {self.bfloat16_gflops:.3g}{bf16_at} vs fp32 {self.float32_gflops:.3g} "
                f"GFLOP/s at {shape}: {self.bf16_speedup:.3g}x")


@dataclass(frozen=True)
class Precision:
    """The dtypes of one run and why they were chosen."""

    model_dtype: str
    """Language model weights and forward passes (activations, every eval)."""
    sae_matmul_dtype: str
    """The SAE's training matmuls (autocast); its weights, Adam and loss stay fp32."""
    requested: str
    """EXPERIMENT_PRECISION as given (auto, float32 or bfloat16)."""
    reason: str
    """One line: the rule that decided and the measured figures."""
    device: str
    native_bf16: bool | None
    """Whether the CPU's flags announce native bf16 (None: not a CPU, or flags unreadable)."""
    cpu_flags: tuple[str, ...]
    """The NATIVE_BF16_FLAGS this CPU has."""
    speeds: dict[str, MatmulSpeed]
    """'model' and 'sae' probes (empty on CUDA or when nothing was measured)."""
    warning: str | None = None

    @property
    def sae_torch_dtype(self):
        """sae_matmul_dtype as the torch dtype a trainer takes."""
        return torch_dtype(self.sae_matmul_dtype)

    def record(self) -> dict:
        """For config.json's provenance."""
        record = asdict(self)
        record["speeds"] = {name: {**asdict(s), "bf16_speedup": s.bf16_speedup}
                            for name, s in self.speeds.items()}
        record["cpu_flags"] = list(self.cpu_flags)
        return record

    @classmethod
    def from_record(cls, record: dict) -> Precision:
        speeds = {name: MatmulSpeed(shape=tuple(s["shape"]), float32_gflops=s["float32_gflops"],
                                    bfloat16_gflops=s["bfloat16_gflops"],
                                    bfloat16_shape=tuple(s["bfloat16_shape"]), threads=s["threads"])
                  for name, s in record.get("speeds", {}).items()}
        return cls(model_dtype=record["model_dtype"], sae_matmul_dtype=record["sae_matmul_dtype"],
                   requested=record["requested"], reason=record["reason"], device=record["device"],
                   native_bf16=record.get("native_bf16"),
                   cpu_flags=tuple(record.get("cpu_flags", ())), speeds=speeds,
                   warning=record.get("warning"))



def _seconds_per_matmul(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    for _ in range(WARMUP_CALLS):  # kernel selection and JIT, tile set-up, first-touch of the output
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return best


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigurationError(f"unknown dtype {name!r}; use one of {sorted(dtypes)}")
    return dtypes[name]


def measure_matmul_speed(m: int, k: int, n: int, repeats: int = 3) -> MatmulSpeed:
    """Best-of-`repeats` GFLOP/s of (m x k) @ (k x n) in fp32 and bf16 on the CPU (at most
    PROBE_MAX_ROWS rows), with torch's current thread count. bf16 is timed on PROBE_SLICE first;
    the full shape follows only if that slice is not already SLOW_SLICE_RATIO below fp32."""
    m = min(m, PROBE_MAX_ROWS)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator)
    b = torch.randn(k, n, generator=generator)
    fp32 = 2 * m * k * n / _seconds_per_matmul(a, b, repeats) / 1e9
    rows, cols = min(m, PROBE_SLICE[0]), min(n, PROBE_SLICE[1])
    bf16_shape = (rows, k, cols)
    bf16 = 2 * rows * k * cols / _seconds_per_matmul(
        a[:rows].bfloat16(), b[:, :cols].bfloat16(), repeats) / 1e9
    if bf16_shape != (m, k, n) and bf16 >= SLOW_SLICE_RATIO * fp32:
        bf16_shape = (m, k, n)
        bf16 = 2 * m * k * n / _seconds_per_matmul(a.bfloat16(), b.bfloat16(), repeats) / 1e9
    return MatmulSpeed((m, k, n), fp32, bf16, bf16_shape, torch.get_num_threads())


@dataclass(frozen=True)
class ProbeShapes:
    """The run's matmul shapes the probe times."""

    model: tuple[int, int, int]
    """(tokens per forward batch, d_model, d_mlp)."""
    sae: tuple[int, int, int]
    """(tokens per training batch, d_model, base width)."""


def choose_precision(device: str, requested: str, model_dtype: str, matmul_dtype: str,
                     shapes: ProbeShapes,
                     measure: Callable[[int, int, int], MatmulSpeed] | None = None,
                     flags: tuple[str, ...] | None = ...) -> Precision:
    """The dtypes of a run on `device`.

    `requested`: EXPERIMENT_PRECISION; `model_dtype` / `matmul_dtype`: the preset's and Config's
    values ('auto' or a dtype they pin). A forced request overrides both pins. `measure` and
    `flags` are the probe and the CPU's bf16 flags (tests inject them).
    """
    for name, value in (("EXPERIMENT_PRECISION", requested), ("the preset's model_dtype", model_dtype),
                        ("Config.matmul_dtype", matmul_dtype)):
        if value not in PRECISIONS:
            raise ConfigurationError(f"{name}={value!r} is not one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        model_dtype = matmul_dtype = requested
    on_cuda = torch.device(device).type == "cuda"
    if flags is ...:
        flags = None if on_cuda else cpu_bf16_flags()
    native = None if flags is None else bool(flags)

    if on_cuda:
        model = "bfloat16" if model_dtype == "auto" else model_dtype
        sae = "bfloat16" if matmul_dtype == "auto" else matmul_dtype
        how = "forced by EXPERIMENT_PRECISION" if requested != "auto" else "cuda: bf16"
        return Precision(model, sae, requested, f"{how}: model {model}, SAE matmuls {sae}", device,
                         native, tuple(flags or ()), {})

    speeds, contradicted = _measure_both(shapes, measure or measure_matmul_speed, native)
    chosen, why = {}, []
    for name, pinned in (("model", model_dtype), ("sae", matmul_dtype)):
        speed = speeds[name]
        if name in contradicted:
            speed_text = (f"{speed.describe()}; measured again: the first probe, "
                          f"{contradicted[name].describe()}, contradicted the CPU's flags")
        else:
            speed_text = speed.describe()
        if pinned != "auto":
            chosen[name] = pinned
            source = "EXPERIMENT_PRECISION" if requested != "auto" else (
                "the preset" if name == "model" else "Config.matmul_dtype")
            why.append(f"{name} {pinned} (set by {source}; {speed_text})")
        else:
            chosen[name] = "bfloat16" if speed.bf16_speedup >= BF16_MIN_SPEEDUP else "float32"
            why.append(f"{name} {chosen[name]} ({speed_text})")
    flag_text = ("native bf16: " + ", ".join(flags)) if flags else (
        "no native bf16 flag" if flags is not None else "CPU flags unknown")
    reason = f"cpu, {flag_text}: " + "; ".join(why)

    return Precision(chosen["model"], chosen["sae"], requested, reason, device, native,
                     tuple(flags or ()), speeds, _slow_bf16_warning(chosen, speeds, requested))


def _measure_both(shapes: ProbeShapes, measure: Callable[[int, int, int], MatmulSpeed],
                  native: bool | None) -> tuple[dict[str, MatmulSpeed], dict[str, MatmulSpeed]]:
    """The model's and the SAE's matmul speeds; where a probe contradicts the CPU's flags, the
    second measurement (returned in the first dict; the contradicted one in the second)."""
    speeds, contradicted = {}, {}
    for name, shape in (("model", shapes.model), ("sae", shapes.sae)):
        speeds[name] = measure(*shape)
        if native is not None and (speeds[name].bf16_speedup >= BF16_MIN_SPEEDUP) != native:
            # the flags and the measurement disagree: a noisy timing or a real limit (an ISA cap
            # such as ONEDNN_MAX_CPU_ISA); a second measurement decides
            contradicted[name], speeds[name] = speeds[name], measure(*shape)
    return speeds, contradicted


def _slow_bf16_warning(chosen: dict[str, str], speeds: dict[str, MatmulSpeed],
                       requested: str) -> str | None:
    """A warning when bf16 was forced or pinned where the probe measured it slower than fp32."""
    slow = [name for name in ("model", "sae")
            if chosen[name] == "bfloat16" and speeds[name].bf16_speedup < 1]
    if not slow:
        return None
    worst = min(speeds[name].bf16_speedup for name in slow)
    return (f"bf16 was forced ({'EXPERIMENT_PRECISION' if requested != 'auto' else 'pinned'}) "
            f"on a CPU where bf16 matmuls ran {1 / worst:.0f}x slower than fp32 ("
            + "; ".join(f"{name}: {speeds[name].describe()}" for name in slow)
            + "); expect a very slow run, or set EXPERIMENT_PRECISION=auto")


def precision_for_run(preset, model_dims: tuple[int, int], requested: str, matmul_dtype: str, batch_size: int,
                      d_sae: int, earlier: dict | None = None, cache_dir: Path | None = None
                      ) -> Precision:
    """The precision of one run of `preset` (a model of `model_dims` (d_model, d_mlp), an SAE of base width `d_sae`
    trained on batches of `batch_size`).

    `earlier`: the record of an earlier attempt of the same run, whose dtypes a resumed run
    keeps (so it computes what an uninterrupted run would). `cache_dir`: where the probe's
    verdict for this machine, these shapes and these settings is kept, so that every run of a
    sweep on one machine uses the same precision (a probe under load can read differently).
    """
    if earlier is not None and requested in ("auto", earlier.get("requested")):
        kept = Precision.from_record(earlier)
        return replace(kept, reason=f"kept from the earlier attempt of this run: {kept.reason}")
    d_model, d_mlp = model_dims
    shapes = ProbeShapes(model=(preset.llm_batch_size * preset.context_length, d_model, d_mlp),
                         sae=(batch_size, d_model, d_sae))
    path = None
    if cache_dir is not None and torch.device(preset.device).type == "cpu":
        key = {"probe": PROBE_VERSION, "cpu": cpu_name(), "flags": cpu_bf16_flags(),
               "torch": torch.__version__, "threads": torch.get_num_threads(),
               "shapes": asdict(shapes), "requested": requested, "model_dtype": preset.model_dtype,
               "matmul_dtype": matmul_dtype, "isa_limits": {name: os.environ.get(name) for name in ISA_VARIABLES}}
        path = Path(cache_dir) / "precision" / f"{key_digest(key)}.json"
        try:
            found = Precision.from_record(json.loads(path.read_text()))
            return replace(found, reason=f"{found.reason} [probed on this machine earlier; delete "
                                         f"{path} to probe again]")
        except (OSError, ValueError, KeyError):
            pass
    precision = choose_precision(preset.device, requested, preset.model_dtype, matmul_dtype, shapes)
    if path is not None:
        from sae_harness.records.run_directory import atomic_write_json

        atomic_write_json(path, precision.record())
    return precision


ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")
"""Environment variables that change which instructions torch's kernels use (part of the key)."""


def resolve_matmul_dtype(matmul_dtype: str, device, batch_size: int, d_in: int, d_sae: int) -> str:
    """Config.matmul_dtype as a concrete dtype for an SAE trained outside a run (a benchmark, a
    test): 'auto' takes the choice a run on this machine would make for these shapes."""
    if matmul_dtype != "auto":
        return matmul_dtype
    shapes = ProbeShapes(model=(batch_size, d_in, d_sae), sae=(batch_size, d_in, d_sae))
    return choose_precision(str(device), "auto", "float32", "auto", shapes).sae_matmul_dtype

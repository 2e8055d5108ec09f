"""The precision of a run follows what the machine does, measured, and is recorded."""

import json

import pytest
import torch

from sae_harness.data import activations as A
from sae_harness.errors import ConfigurationError
from sae_harness.hardware.machine import cpu_bf16_flags
from sae_harness.hardware.precision import (BF16_MIN_SPEEDUP, MatmulSpeed, Precision, ProbeShapes,
                                            choose_precision, measure_matmul_speed)
from sae_harness.data.presets import read_precision

SHAPES = ProbeShapes(model=(2048, 640, 2048), sae=(1024, 640, 2048))


def probe(bf16_speedup: float):
    """A stand-in for the matmul probe: fp32 at 100 GFLOP/s, bf16 at `bf16_speedup` times that."""
    def measure(m, k, n):
        return MatmulSpeed((m, k, n), 100.0, 100.0 * bf16_speedup, (m, k, n), 2)
    return measure


def test_a_cpu_where_bf16_is_faster_gets_bf16_for_both():
    p = choose_precision("cpu", "auto", "auto", "auto", SHAPES, probe(2.4), flags=("avx512_bf16",))
    assert (p.model_dtype, p.sae_matmul_dtype) == ("bfloat16", "bfloat16")
    assert p.native_bf16 and "avx512_bf16" in p.reason and "2.4x" in p.reason and p.warning is None


def test_a_cpu_where_bf16_is_slower_gets_fp32_even_if_its_flags_say_native():
    p = choose_precision("cpu", "auto", "auto", "auto", SHAPES, probe(0.005), flags=("avx512_bf16",))
    assert (p.model_dtype, p.sae_matmul_dtype) == ("float32", "float32")
    assert "0.005x" in p.reason and p.warning is None


def probes(*bf16_speedups: float):
    """Successive probe readings: the first call reads the first speed-up, and so on."""
    readings = iter(bf16_speedups)

    def measure(m, k, n):
        return probe(next(readings))(m, k, n)
    return measure


def test_a_reading_that_contradicts_the_flags_is_measured_again_and_the_second_decides():
    # a native-bf16 CPU whose first model reading was an early, slow call (seen on a Xeon with
    # AMX: 5.5 GFLOP/s, 0.018x fp32); the second reading is the machine's
    p = choose_precision("cpu", "auto", "auto", "auto", SHAPES, probes(0.018, 5.2, 5.6),
                         flags=("avx512_bf16", "amx_bf16"))
    assert (p.model_dtype, p.sae_matmul_dtype) == ("bfloat16", "bfloat16")
    assert p.speeds["model"].bf16_speedup == 5.2 and "0.018x" in p.reason
    assert "measured again" in p.reason and p.reason.count("measured again") == 1
    # without native bf16, a fast first reading is checked likewise
    q = choose_precision("cpu", "auto", "auto", "auto", SHAPES, probes(3.0, 0.005, 0.005), flags=())
    assert (q.model_dtype, q.sae_matmul_dtype) == ("float32", "float32")
    # a reading that agrees with the flags is taken at once (a third call would fail: no reading)
    r = choose_precision("cpu", "auto", "auto", "auto", SHAPES, probes(5.0, 5.0), flags=("amx_bf16",))
    assert r.model_dtype == "bfloat16" and "measured again" not in r.reason


def test_a_small_bf16_gain_is_not_worth_the_precision():
    p = choose_precision("cpu", "auto", "auto", "auto", SHAPES, probe(BF16_MIN_SPEEDUP * 0.9), flags=())
    assert p.model_dtype == "float32" and "no native bf16 flag" in p.reason


def test_forcing_bf16_where_it_is_slow_warns_with_the_measured_slowdown():
    p = choose_precision("cpu", "bfloat16", "auto", "auto", SHAPES, probe(0.005), flags=())
    assert (p.model_dtype, p.sae_matmul_dtype) == ("bfloat16", "bfloat16")
    assert "200x slower" in p.warning and "EXPERIMENT_PRECISION" in p.warning
    forced = choose_precision("cpu", "float32", "auto", "auto", SHAPES, probe(3.0), flags=())
    assert (forced.model_dtype, forced.sae_matmul_dtype) == ("float32", "float32")


def test_a_pinned_dtype_is_kept_and_cuda_takes_bf16_without_measuring():
    pinned = choose_precision("cpu", "auto", "float32", "auto", SHAPES, probe(3.0), flags=())
    assert (pinned.model_dtype, pinned.sae_matmul_dtype) == ("float32", "bfloat16")

    def never(*shape):
        raise AssertionError("CUDA needs no probe")

    cuda = choose_precision("cuda", "auto", "auto", "auto", SHAPES, never, flags=None)
    assert (cuda.model_dtype, cuda.sae_matmul_dtype, cuda.speeds) == ("bfloat16", "bfloat16", {})


def test_the_record_round_trips_through_json():
    p = choose_precision("cpu", "auto", "auto", "auto", SHAPES, probe(0.01), flags=())
    again = Precision.from_record(json.loads(json.dumps(p.record())))
    assert again == p


def test_the_probe_measures_both_dtypes_quickly_at_the_run_shapes():
    speed = measure_matmul_speed(300, 64, 128)
    assert speed.shape == (256, 64, 128)  # rows capped: matmul speed has levelled off
    assert speed.float32_gflops > 0 and speed.bfloat16_gflops > 0 and speed.threads >= 1


def test_the_native_bf16_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Some CPU\nflags\t\t: fpu sse2 amx_tile avx2 avx512_bf16\n")
    assert cpu_bf16_flags(cpuinfo) == ("avx512_bf16", "amx_tile")  # in NATIVE_BF16_FLAGS' order
    cpuinfo.write_text("model name\t: Zen 2\nflags\t\t: fpu sse2 avx2\n")
    assert cpu_bf16_flags(cpuinfo) == ()  # readable, none native
    cpuinfo.write_text("model name\t: no flags line\n")
    assert cpu_bf16_flags(cpuinfo) is None and cpu_bf16_flags(tmp_path / "absent") is None


def test_experiment_precision_is_validated():
    assert read_precision({}) == "auto"
    assert read_precision({"EXPERIMENT_PRECISION": "Float32"}) == "float32"
    with pytest.raises(ConfigurationError, match="EXPERIMENT_PRECISION='fp16' is not one of"):
        read_precision({"EXPERIMENT_PRECISION": "fp16"})


def test_an_fp32_activation_cache_is_never_read_as_a_bf16_one(tmp_path):
    spec = dict(model_name="m", weights_id="w", hook_name="h", text="t", n_heldout=2, n_train=6,
                context_length=8)
    fp32 = A.ActivationCache(tmp_path, A.ActivationSpec(**spec, dtype="float32"))
    bf16 = A.ActivationCache(tmp_path, A.ActivationSpec(**spec, dtype="bfloat16"))
    assert fp32.dir != bf16.dir
    from tqdm import tqdm

    fp32.write(iter([torch.randn(8, 4)]), 4, tqdm(disable=True))
    assert fp32.problem() is None and bf16.problem() == "absent"


def test_a_machine_keeps_its_verdict_so_every_run_of_a_sweep_uses_one_precision(tmp_path, monkeypatch):
    from dataclasses import replace

    import sae_harness.hardware.precision as P
    from sae_harness.data.presets import PRESETS

    preset = replace(PRESETS["embedded"], model_dtype="auto")
    dims = (64, 256)  # the model's d_model and d_mlp
    monkeypatch.setattr(P, "measure_matmul_speed", probe(3.0))
    first = P.precision_for_run(preset, dims, "auto", "auto", 128, 256, cache_dir=tmp_path)
    monkeypatch.setattr(P, "measure_matmul_speed", probe(0.01))  # a probe that would now differ
    again = P.precision_for_run(preset, dims, "auto", "auto", 128, 256, cache_dir=tmp_path)
    assert first.model_dtype == again.model_dtype == "bfloat16"
    assert "probed on this machine earlier" in again.reason
    other = P.precision_for_run(preset, dims, "auto", "auto", 128, 512, cache_dir=tmp_path)
    assert other.model_dtype == "float32"  # other shapes: probed afresh

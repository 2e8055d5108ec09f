"""Realistic run directories, written by tests into tmp_path (nothing big is committed).

The numbers are those of embedded-setting runs (Gemma-3-270M layer 6, n_base = 2048, 500k tokens)
and the key names are those of DESIGN 4 and SAE-Bench's schemas:

    write_complete_run   every group and file (final_info, run_status, config, training log,
                         sparse_probing/absorption/weights/hierarchy JSON)
    write_partial_run    training, core and sparse_probing only; absorption failed (recorded
                         in run_status.json); no weights.json, hierarchy group or training log
    write_degenerate_run base L0 > n_base/2, negative explained variance, every SAE probe at 0.5
    write_legacy_run     the flat AI-Scientist template dict the project was seeded with
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sae_harness.records.frontier import FRONTIER_FORMAT, frontier_key


K_VALUES = (1, 2, 5, 10, 20, 50)
N_BASE = 2048

VARIANT_TITLES = {"baseline": "Baseline (vanilla ReLU SAE)", "cosine_sparsity": "Previous cosine variant",
                  "tuned_cosine": "Tuned cosine (this idea)"}
VARIANT_CONFIGS = {
    "baseline": dict(concept_k=0, l1_base=0.04, l1_concept=0.0, weight_l1_base=0.0, weight_l1_concept_min=0.0,
                     weight_l1_concept_max=0.0, base_init="dictionary_learning", lr_schedule="constant",
                     init_scale_concept=0.001),
    "cosine_sparsity": dict(concept_k=12, l1_base=0.1, l1_concept=0.3, weight_l1_base=0.02,
                            weight_l1_concept_min=0.001, weight_l1_concept_max=0.1, base_init="xavier_normal",
                            init_scale_concept=0.002, lr_schedule="cosine"),
    "tuned_cosine": dict(concept_k=10, l1_base=0.1, l1_concept=0.35, weight_l1_base=0.02, weight_l1_concept_min=0.001,
                         weight_l1_concept_max=0.12, base_init="xavier_normal", init_scale_concept=0.001,
                         lr_schedule="cosine_restarts"),
}

# headline numbers per variant: (EV, L0 base, L0 concept, SAE top-1 probe, absorption fraction)
HEADLINES = {
    "baseline": (0.951, 173.0, 0.0, 0.702, 0.214),
    "cosine_sparsity": (0.912, 41.3, 11.6, 0.688, 0.173),
    "tuned_cosine": (0.924, 35.8, 9.7, 0.731, 0.128),
}
LLM_ACCURACY = {1: 0.684, 2: 0.731, 5: 0.802, 10: 0.846, 20: 0.884, 50: 0.912}


def _write(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def config_json(variant: str, **changes) -> dict:
    config = dict(variant=variant, n_base=N_BASE, concept_ratio=4, weight_l1_concept_ramp_fraction=5 / 12,
                  init_scale_base=1.0, lr=0.0003, adam_betas=[0.9, 0.999], lr_warmup_fraction=1 / 12,
                  lr_restart_period_fraction=1 / 6, lr_restart_mult=2.0, lr_min_ratio=0.1,
                  training_tokens=500000, heldout_tokens=16384, batch_size=512, seed=0,
                  log_every=10, dead_window_tokens=100000, dead_warning_fraction=0.5,
                  matmul_dtype="bfloat16")
    config.update(VARIANT_CONFIGS[variant], **changes)
    return {
        "variant": variant,
        "variant_title": VARIANT_TITLES[variant],
        "config": config,
        "preset": {"name": "embedded", "model_name": "google/gemma-3-270m",
                   "model_source": "gemma3_gguf_package", "hook_layer": 6,
                   "text_dataset": "embedded", "device": "cpu", "model_dtype": "bfloat16",
                   "context_length": 128, "llm_batch_size": 16, "n_layers_loaded": None,
                   "text_column": "text", "probing_datasets": "sae_probes", "eval_sizes": "cpu"},
        "preset_reason": "forced by EXPERIMENT_PRESET=embedded",
        "cache_dir": "/root/.cache/sae_harness",
        "provenance": {"started": "2026-11-28T19:22:25+0000", "host": "vm", "python": "3.11.7",
                       "device": "cpu: x86_64, 2 threads",
                       "git": {"commit": "71dacf2", "dirty": False},
                       "packages": {"torch": "2.14.1", "sae-bench": "0.6.0", "sae-lens": "6.54.12"}},
    }


def training_means(variant: str, steps: int = 488) -> dict:
    ev, l0_base, l0_concept, _, _ = HEADLINES[variant]
    return {
        "final_loss": 0.0751, "final_reconstruction_loss": 1 - ev + 0.003, "steps": float(steps),
        "tokens": float(steps * 1024), "seconds": 65.6, "tokens_per_second": 7612.9,
        "input_scale": 136.36, "input_std": 0.3366, "explained_variance": ev,
        "mse": 131.4 * (1 - ev) / 0.05, "l0_base": l0_base, "l0_concept": l0_concept,
        "l0_total": l0_base + l0_concept, "dead_fraction_base": 0.012,
        "dead_fraction_concept": 0.0 if variant == "baseline" else 0.31,
        "heldout_tokens": 16384.0, "activation_seconds": 0.0, "activation_cache_hit": 1.0,
        "degenerate": 0.0,
    }


def core_means(variant: str) -> dict:
    ev, l0_base, l0_concept, _, _ = HEADLINES[variant]
    return {"explained_variance": ev - 0.015, "explained_variance_legacy": ev - 0.02,
            "mse": 2.31, "cossim": 0.962, "l0": l0_base + l0_concept, "l1": 412.7,
            "ce_loss_score": 0.931, "ce_loss_with_sae": 3.412, "ce_loss_without_sae": 3.218,
            "ce_loss_with_ablation": 6.04, "kl_div_score": 0.925, "kl_div_with_sae": 0.211,
            "kl_div_with_ablation": 2.81, "l2_ratio": 0.914, "frac_alive": 0.874}


def sparse_probing_means(sae_top1: float) -> dict:
    means = {"llm_test_accuracy": 0.941}
    means.update({f"llm_top_{k}_test_accuracy": a for k, a in LLM_ACCURACY.items()})
    means["sae_test_accuracy"] = 0.927
    for k in K_VALUES:  # rises from top-1 towards the full probe
        means[f"sae_top_{k}_test_accuracy"] = round(sae_top1 + (0.905 - sae_top1) * math.log(k) / math.log(50), 4)
    return means


def absorption_means(fraction: float) -> dict:
    return {"mean_absorption_fraction_score": fraction, "mean_full_absorption_score": fraction / 2.6,
            "mean_num_split_features": 1.31, "std_dev_absorption_fraction_score": 0.09,
            "std_dev_full_absorption_score": 0.05, "std_dev_num_split_features": 0.58}


def hierarchy_means() -> dict:
    return {"alive_concepts": 318.0, "mi_mean": 0.0412, "nmi_mean": 0.118, "h_b_given_c_mean": 0.437,
            "p_b_given_c_mean": 0.583, "leakage_mean": 0.094, "null_mi_mean": 0.0011,
            "null_nmi_mean": 0.004, "null_h_b_given_c_mean": 0.201, "null_p_b_given_c_mean": 0.038,
            "null_leakage_mean": 0.712}


def weights_means(has_concepts: bool) -> dict:
    means = {"dec_norm_mean_base": 1.0, "enc_norm_mean_base": 0.83}
    if has_concepts:
        means.update({"dec_norm_mean_concept": 1.0, "enc_norm_mean_concept": 0.061,
                      "w_enc2_frac_abs_below_1e-3": 0.962, "effective_base_per_concept_mean": 14.2,
                      "concept_top1_base_decoder_cosine_mean": 0.47,
                      "concept_random_base_decoder_cosine_mean": 0.031})
    return means


def weights_json(has_concepts: bool, seed: int) -> dict:
    """weights.json as sae_harness/evals/weights.py writes it: its analysis of a random SAE."""
    from saes import hierarchical_sae
    from sae_harness.evals.weights import weight_analysis

    sae = hierarchical_sae(64, N_BASE, N_BASE // 4 if has_concepts else 0, 10 if has_concepts else 0,
                            model_name="google/gemma-3-270m", hook_layer=6, context_size=128,
                            init_scale_concept=0.01, seed=seed)
    return weight_analysis(sae)[1]


def training_log(variant: str, steps: int = 488, log_every: int = 10) -> list[dict]:
    ev, l0_base, l0_concept, _, _ = HEADLINES[variant]
    has_concepts = variant != "baseline"
    lines = []
    for step in range(0, steps, log_every):
        t = step / steps
        warm = min(1.0, (step + 1) / 41)
        lr = 0.001 * warm * (1 if variant == "baseline" else 0.55 + 0.45 * math.cos(math.pi * t))
        lw2 = 0.001 + (0.12 - 0.001) * (1 - math.cos(math.pi * min(t * 2.4, 1))) / 2 if has_concepts else 0.0
        rec = (1 - ev) + 0.7 * math.exp(-step / 40)
        l0b = l0_base + (1023 - l0_base) * math.exp(-step / 60)
        lines.append({
            "step": step, "tokens": (step + 1) * 1024, "lr": lr, "weight_l1_concept_coef": lw2,
            "total": rec + 0.03 + 0.5 * math.exp(-step / 80), "reconstruction": rec,
            "l1_base": 2.0 + 5 * math.exp(-step / 90),
            "l1_concept": 0.05 * (1 - math.exp(-step / 50)) if has_concepts else 0.0,
            "weight_l1_base": 0.55 - 0.1 * t if has_concepts else 0.08,
            "weight_l1_concept": 0.04 + 0.2 * t if has_concepts else 0.0,
            "l0_base": l0b, "l0_concept": l0_concept * (1 - math.exp(-step / 30)) if has_concepts else 0.0,
            "dead_fraction_base": 0.012 * t, "dead_fraction_concept": 0.31 * t if has_concepts else 0.0,
            "seconds": 0.13 * step,
        })
        if has_concepts:  # the concept-level terms and diagnostics (concept_diagnostics.py)
            lines[-1].update({
                "concept_reconstruction": 0.9 - 0.3 * t, "auxk": 0.8 * math.exp(-step / 50),
                "concept_penalty_factor": min(1.0, step / 41), "concept_pre_mean": -0.1 - 0.2 * t,
                "concept_pre_max": 2.0 + t, "concept_pre_positive_fraction": 0.05,
                "concept_bias_mean": -0.01 * t, "concept_latents_in_batch": 400 + 50 * t,
                "grad_share_reconstruction": 0.8 - 0.2 * t, "grad_share_weight_l1_concept": 0.1 + 0.2 * t,
                "grad_share_concept_reconstruction": 0.05, "grad_share_auxk": 0.05,
            })
    return lines


def _sae_bench_result(eval_type: str, metrics: dict, details: list) -> dict:
    return {"eval_type_id": eval_type, "eval_config": {"model_name": "google/gemma-3-270m"},
            "eval_id": f"{eval_type}-0000", "datetime_epoch_millis": 1795893745000,
            "eval_result_metrics": metrics, "eval_result_details": details,
            "sae_bench_commit_hash": "unknown", "sae_lens_id": "custom_sae",
            "sae_lens_release_id": "hierarchical_sae", "sae_lens_version": "6.54.12",
            "sae_cfg_dict": {"model_name": "google/gemma-3-270m", "d_in": 640, "d_sae": 2560,
                             "hook_layer": 6, "hook_name": "blocks.6.hook_resid_post"}}


def write_complete_run(run_dir: Path, variant: str = "tuned_cosine", seed: int = 0) -> Path:
    """A finished run with every group and file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _, _, _, sae_top1, absorption = HEADLINES[variant]
    has_concepts = variant != "baseline"
    probing = sparse_probing_means(sae_top1)
    info = {
        "training": {"means": training_means(variant), "degenerate_reasons": []},
        "core": {"means": core_means(variant)},
        "sparse_probing": {"means": probing},
        "absorption": {"means": absorption_means(absorption)},
        "weights": {"means": weights_means(has_concepts)},
    }
    if has_concepts:
        info["hierarchy"] = {"means": hierarchy_means()}
        _write(run_dir / "hierarchy.json", {"means": hierarchy_means(), "per_concept": []})
    _write(run_dir / "final_info.json", info)
    _write(run_dir / "run_status.json", {"started": "2026-11-28T19:22:25+0000", "state": "finished",
                                         "seconds": 412.0})
    _write(run_dir / "config.json", config_json(variant))
    (run_dir / "training_log.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in training_log(variant)))
    llm = {k: v for k, v in probing.items() if k.startswith("llm")}
    sae = {k: v for k, v in probing.items() if k.startswith("sae")}
    details = [{"dataset_name": name, **llm, **sae} for name in ("amazon_5star", "agencies_news")]
    _write(run_dir / "sparse_probing.json", _sae_bench_result("sparse_probing", {"llm": llm, "sae": sae}, details))
    letters = [{"first_letter": c, "mean_absorption_fraction": absorption, "full_absorption_rate": 0.05,
                "num_full_absorption": 3, "num_probe_true_positives": 60, "num_split_features": 1}
               for c in "abc"]
    _write(run_dir / "absorption.json",
           _sae_bench_result("absorption_first_letter", {"mean": absorption_means(absorption)}, letters))
    _write(run_dir / "weights.json", weights_json(has_concepts, seed))
    return run_dir


def write_partial_run(run_dir: Path, variant: str = "cosine_sparsity") -> Path:
    """A run whose absorption eval failed and whose weights/hierarchy/training log are absent."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _, _, _, sae_top1, _ = HEADLINES[variant]
    info = {"training": {"means": training_means(variant), "degenerate_reasons": []},
            "core": {"means": core_means(variant)},
            "sparse_probing": {"means": sparse_probing_means(sae_top1)}}
    _write(run_dir / "final_info.json", info)
    _write(run_dir / "run_status.json", {
        "started": "2026-11-28T18:02:11+0000", "state": "finished", "seconds": 305.0,
        "failures": {"absorption": "too few letters passed the probe-F1 threshold; no result JSON"}})
    _write(run_dir / "config.json", config_json(variant))
    return run_dir


def write_degenerate_run(run_dir: Path) -> Path:
    """A baseline run whose SAE fires on most latents, explains nothing and probes at chance."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    training = training_means("baseline", steps=12)
    training.update(explained_variance=-0.083, l0_base=1536.4, l0_total=1536.4,
                    dead_fraction_base=0.0, degenerate=1.0)
    probing = {"llm_test_accuracy": 0.941, **{f"llm_top_{k}_test_accuracy": a for k, a in LLM_ACCURACY.items()},
               "sae_test_accuracy": 0.5, **{f"sae_top_{k}_test_accuracy": 0.5 + 0.003 * (i % 2)
                                             for i, k in enumerate(K_VALUES)}}
    info = {"training": {"means": training,
                         "degenerate_reasons": ["base L0 1536 exceeds n_base/2 = 1024",
                                                "explained variance -0.083 is negative"]},
            "sparse_probing": {"means": probing}}
    _write(run_dir / "final_info.json", info)
    _write(run_dir / "run_status.json", {"started": "2026-11-28T17:40:00+0000", "state": "finished",
                                         "seconds": 41.0})
    _write(run_dir / "config.json", config_json("baseline", training_tokens=12288, lr=0.1))
    (run_dir / "training_log.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in training_log("baseline", steps=12, log_every=2)))
    return run_dir


LEGACY_FINAL_INFO = {
    "training_steps": 0, "final_loss": None, "layer": 19, "dict_size": 2304,
    "learning_rate": 0.0003, "sparsity_penalty": 0.04,
    "eval_type_id": "sparse_probing",
    "eval_config": {"random_seed": 42, "dataset_names": ["LabHC/bias_in_bios_class_set1",
                                                         "canrager/amazon_reviews_mcauley_1and5"],
                    "probe_train_set_size": 4000, "probe_test_set_size": 1000, "context_length": 128,
                    "sae_batch_size": 125, "llm_batch_size": 32, "llm_dtype": "bfloat16",
                    "model_name": "google/gemma-2-2b", "k_values": list(K_VALUES), "lower_vram_usage": False},
    "eval_id": "0b3f5f29-3a1a-4e77-9b1e-1b7d7f1c2a11", "datetime_epoch_millis": 1737833200000,
    "eval_result_metrics": {
        "llm": {"llm_test_accuracy": 0.9391, **{f"llm_top_{k}_test_accuracy": a for k, a in
                                               {1: 0.6843, 2: 0.7361, 5: 0.7921, 10: 0.8326, 20: 0.8776, 50: 0.9231}.items()}},
        "sae": {"sae_test_accuracy": 0.5, **{f"sae_top_{k}_test_accuracy": 0.5 for k in K_VALUES}},
    },
    "eval_result_details": [{"dataset_name": "LabHC/bias_in_bios_class_set1_results",
                             "llm_test_accuracy": 0.959, "sae_test_accuracy": 0.5}],
    "sae_bench_commit_hash": "d8a9fbf", "sae_lens_id": "custom_sae",
    "sae_lens_release_id": "google/gemma-2-2b_layer_5_sae_custom_sae", "sae_lens_version": "5.3.0",
    "sae_cfg_dict": {"model_name": "google/gemma-2-2b", "d_in": 2304, "d_sae": 2304, "hook_layer": 5,
                     "hook_name": "blocks.5.hook_resid_post", "context_size": None,
                     "architecture": "Custom", "activation_fn_str": "relu", "dtype": "bfloat16",
                     "training_tokens": -100000},
}


def write_legacy_run(run_dir: Path) -> Path:
    """The seeded baseline: only a flat AI-Scientist final_info.json (no status, config or log)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write(run_dir / "final_info.json", LEGACY_FINAL_INFO)
    return run_dir


def frontier_for(config: dict, spread: dict | None = None, points: list[tuple] | None = None) -> dict:
    """A frontier.json as build_frontier.py writes it (its schema: FrontierOutput)."""
    def point(family, name, l0, metrics):
        return {"family": family, "name": name, "parameter": {"l1_base": 0.1}, "seed": 0,
                "l0_total": l0, "metrics": metrics, "seconds": 1.0, "folder": f"run_0/frontier/{name}"}

    if points is None:  # (family, L0, metrics)
        points = [("relu", l0, {"explained_variance": ev, "sae_top_1": 0.6})
                  for l0, ev in ((20.0, 0.80), (80.0, 0.90), (200.0, 0.95))]
        points.append(("topk", 5.0, {"explained_variance": 0.7}))
    points = [point(family, f"{family}_{l0:g}", l0, metrics) for family, l0, metrics in points]
    return {"format": FRONTIER_FORMAT, "key": frontier_key(config), "machine": "test CPU",
            "lr": {"relu": 3e-4}, "width": 64, "families_built": ["relu", "topk"],
            "seeds_built": True, "points": points, "seconds": {"frontier": 1.0},
            "seed_spread": {"families": {}, **(spread or {"max_std": {
                "explained_variance": 0.01, "sae_top_1": 0.001}})}}

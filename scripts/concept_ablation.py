#!/usr/bin/env python
"""The concept-level ablation: which aids keep the hierarchical SAE's concept level alive.

    python scripts/concept_ablation.py                 # the committed arms, the table and figure
    python scripts/concept_ablation.py as_written no_l1 # some arms (the table covers all done)

Each arm is the idea as written (`tuned_cosine_as_written`) with some aids switched on
(experiment.py's Config, "aids for the concept level"), or the chosen variant, trained by experiment.py's own
run_experiment on the same cached activations, tokens and seed, and scored by every evaluation
a run has (core, sparse probing, absorption, weights, hierarchy). The arms' run folders live
under the cache (EXPERIMENT_CACHE/concept_ablation/<arm>; a finished arm is not run again);
the committed results are

    results/concept_ablation.json   one row per arm: its changes and the headline figures
    results/concept_ablation.md     the same as a table
    study/plots/concept_ablation.png   alive fraction, NMI / null, EV and absorption per arm

The embedded default takes ~3-4 minutes an arm on a 2-core CPU with native bf16 (warm caches).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
import experiment as E  # noqa: E402
from sae_harness.data.presets import read_run_environment  # noqa: E402
from sae_harness.records.run_directory import STUDY_DIR, holds_finished_run, read_json, read_config_json  # noqa: E402

REQUIRED = ("training", "core", "sparse_probing", "absorption")
"""An arm counts as done with these groups (the hierarchy of a dead concept level has none)."""
AS_WRITTEN = "tuned_cosine_as_written"
NO_L1 = {"l1_on_topk": False}
WARM_UP = {"concept_penalty_warmup_fraction": 1 / 12, "min_lr_warmup_steps": 100}
RECON = {"concept_recon_coef": 0.1}
AUXK = {"auxk_alpha": 1 / 32}
BALANCE = {"concept_balance_rate": E.Config.concept_balance_rate}
LR = {"lr": E.Config.lr}

ARMS: dict[str, tuple[str, dict]] = {
    # each aid alone, on the idea as written
    "as_written": (AS_WRITTEN, {}),
    "warm_up": (AS_WRITTEN, WARM_UP),
    "auxk": (AS_WRITTEN, AUXK),
    "concept_recon": (AS_WRITTEN, RECON),
    "balance": (AS_WRITTEN, BALANCE),
    "lr_1e-3": (AS_WRITTEN, LR),
    "no_l1": (AS_WRITTEN, NO_L1),
    # without the L1 on TopK, the aids that fight collapse onto a few latents
    "no_l1+init_sigma_0.1": (AS_WRITTEN, {**NO_L1, "init_scale_concept": 0.1}),
    "no_l1+base_subsets": (AS_WRITTEN, {**NO_L1, "concept_init": "base_subsets"}),
    "no_l1+auxk": (AS_WRITTEN, {**NO_L1, **AUXK}),
    "no_l1+recon+auxk+warm_up": (AS_WRITTEN, {**NO_L1, **RECON, **AUXK, **WARM_UP}),
    "no_l1+balance": (AS_WRITTEN, {**NO_L1, **BALANCE}),
    "no_l1+balance+auxk": (AS_WRITTEN, {**NO_L1, **BALANCE, **AUXK}),
    # the chosen set (= no_l1+balance+auxk at lr 1e-3), and every aid
    "tuned_cosine": ("tuned_cosine", {}),
    "tuned_cosine+recon+warm_up": ("tuned_cosine", {**RECON, **WARM_UP}),
}
COMMITTED_ARMS = ("as_written", "warm_up", "auxk", "concept_recon", "balance", "lr_1e-3", "no_l1",
                  "no_l1+init_sigma_0.1", "no_l1+auxk", "no_l1+balance", "no_l1+balance+auxk",
                  "tuned_cosine")
"""The arms the committed table holds (all of ARMS is ~35 minutes more on a 2-core CPU)."""
"""Arm name -> (variant, changes to it). The as-written variant has every aid off and lr 3e-4;
tuned_cosine is Config's defaults (experiment.py)."""


def arm_config_changes(arm: str) -> tuple[str, dict]:
    variant, changes = ARMS[arm]
    return variant, dict(changes)


def study_run_of(cfg) -> Path | None:
    """A finished run of the study (study/run_i) trained with exactly `cfg` (the as-written and
    default variants are study/run_4 and study/run_2): reused rather than trained again."""
    return next((run for run in sorted((REPO / STUDY_DIR).glob("run_[0-9]*"))
                 if holds_finished_run(run, REQUIRED, cfg)), None)


def run_arm(arm: str, env, root: Path) -> Path:
    variant, changes = arm_config_changes(arm)
    study_run = study_run_of(E.make_config(variant, env.preset.name, env.training_tokens, changes))
    if study_run is not None:
        print(f"[ablation] {arm}: the study's {STUDY_DIR}/{study_run.name}")
        return study_run
    out_dir = root / arm
    if holds_finished_run(out_dir, REQUIRED):
        print(f"[ablation] {arm}: finished before, reused ({out_dir})")
        return out_dir
    print(f"[ablation] {arm}: {variant} + {changes}")
    started = time.time()
    E.run_experiment(out_dir, replace(env, variant=variant, overwrite=True), changes)
    print(f"[ablation] {arm}: {time.time() - started:.0f} s")
    return out_dir


def arm_row(arm: str, out_dir: Path) -> dict:
    """The headline figures of one finished arm (None where an evaluation had nothing to say)."""
    info = read_json(out_dir / "final_info.json")
    variant, changes = arm_config_changes(arm)

    def get(group: str, name: str):
        return info.get(group, {}).get("means", {}).get(name)

    training = info["training"]["means"]
    row = {"arm": arm, "variant": variant, "changes": changes,
           "concept_alive_fraction": 1 - training["dead_fraction_concept"],
           "l0_concept": training["l0_concept"], "l0_base": training["l0_base"],
           "l0_total": training["l0_total"], "explained_variance": training["explained_variance"],
           "ce_loss_score": get("core", "ce_loss_score"),
           "absorption_fraction": get("absorption", "mean_absorption_fraction_score"),
           "full_absorption": get("absorption", "mean_full_absorption_score"),
           "sae_top_1": get("sparse_probing", "sae_top_1_test_accuracy"),
           "sae_top_5": get("sparse_probing", "sae_top_5_test_accuracy"),
           "degenerate_reasons": info["training"].get("degenerate_reasons", [])}
    hierarchy_file = out_dir / "hierarchy.json"
    nmi = get("hierarchy", "nmi_mean")
    if nmi is not None and hierarchy_file.exists():
        null = get("hierarchy", "null_nmi_mean")
        fired = sorted(c["firings"] for c in read_json(hierarchy_file)["concepts"])
        row.update({"nmi": nmi, "null_nmi": null, "nmi_over_null": nmi / null if null else None,
                    "sibling_nmi": get("hierarchy", "sibling_nmi_mean"),
                    "null_sibling_nmi": get("hierarchy", "null_sibling_nmi_mean"),
                    "leakage": get("hierarchy", "leakage_mean"),
                    "top20_share_of_concept_firings": sum(fired[-20:]) / max(sum(fired), 1)})
    else:
        row["hierarchy"] = info.get("hierarchy", {}).get("skipped") or "nothing to measure"
    return row


COLUMNS = [("arm", "arm", "{}"), ("concept_alive_fraction", "concepts alive", "{:.3f}"),
           ("l0_concept", "L0 concept", "{:.1f}"), ("l0_base", "L0 base", "{:.1f}"),
           ("explained_variance", "EV", "{:.3f}"), ("ce_loss_score", "CE score", "{:.3f}"),
           ("nmi", "NMI", "{:.3f}"), ("null_nmi", "null NMI", "{:.4f}"),
           ("sibling_nmi", "sibling NMI", "{:.3f}"), ("null_sibling_nmi", "null sib.", "{:.4f}"),
           ("leakage", "leakage", "{:.3f}"), ("top20_share_of_concept_firings", "top-20 share", "{:.2f}"),
           ("absorption_fraction", "absorption", "{:.3f}"), ("sae_top_1", "top-1", "{:.3f}"),
           ("sae_top_5", "top-5", "{:.3f}")]


def markdown_table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
             "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [("-" if row.get(key) is None else fmt.format(row[key])) for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each arm is a variant with some Config fields changed:", ""]
    lines += [f"- `{row['arm']}`: {row['variant']} + {json.dumps(row['changes'])}" for row in rows]
    return "\n".join(lines) + "\n"


def plot_ablation(rows: list[dict], path: Path, caption: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("concept_alive_fraction", "concept latents alive (held-out)"),
              ("nmi_over_null", "hierarchy NMI / null"),
              ("explained_variance", "explained variance"),
              ("absorption_fraction", "absorption fraction (lower is better)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 0.32 * len(rows) + 1.6),
                             sharey=True)
    names = [row["arm"] for row in rows]
    for ax, (key, title) in zip(axes, panels):
        values = [row.get(key) or 0.0 for row in rows]
        ax.barh(range(len(rows)), values, color=["#888" if row.get(key) is None else "#3b75af"
                                                 for row in rows])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), names, fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(arms: list[str]) -> None:
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    env = read_run_environment({"EXPERIMENT_PRESET": "embedded", **os.environ})
    root = env.cache_dir / "concept_ablation" / env.preset.name
    folders = {arm: run_arm(arm, env, root) for arm in arms or COMMITTED_ARMS}
    for arm in ARMS:  # arms finished by earlier calls join the table
        if arm not in folders and holds_finished_run(root / arm, REQUIRED):
            folders[arm] = root / arm
    rows = [arm_row(arm, folders[arm]) for arm in ARMS if arm in folders]
    config = read_config_json(folders[rows[0]["arm"]] / "config.json")
    machine = config["provenance"]["device"]
    caption = (f"{env.preset.name} preset, {config['config']['training_tokens']:,} tokens, seed "
               f"{config['config']['seed']}, SAE matmuls {config['precision']['sae_matmul_dtype']}; "
               f"{machine}")
    out = REPO / "results"
    out.mkdir(exist_ok=True)
    (out / "concept_ablation.json").write_text(json.dumps(
        {"caption": caption, "machine": machine, "rows": rows}, indent=1) + "\n")
    (out / "concept_ablation.md").write_text(markdown_table(rows, f"Concept-level ablation: {caption}."))
    figures = REPO / STUDY_DIR / "plots"
    figures.mkdir(parents=True, exist_ok=True)
    plot_ablation(rows, figures / "concept_ablation.png", caption)
    print(f"[ablation] {len(rows)} arms -> results/concept_ablation.{{json,md}}, "
          f"{STUDY_DIR}/plots/concept_ablation.png")


if __name__ == "__main__":
    main(sys.argv[1:])

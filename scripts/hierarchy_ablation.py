#!/usr/bin/env python
"""The hierarchy-pays ablation (README, "Does the hierarchy pay?"): arms into study/hierarchy_pays/.

    python scripts/hierarchy_ablation.py                 # train what is missing, then the table
    python scripts/hierarchy_ablation.py --table-only    # the table of the finished arms only
    python scripts/hierarchy_ablation.py --no-seeds      # the arms without the seed repeats
    EXPERIMENT_TOKENS=2000000 python scripts/hierarchy_ablation.py --second-budget
        # SECOND_BUDGET_ARMS at that budget into study/hierarchy_pays/tokens_2000000/, then its
        # own TopK and Matryoshka frontier (SAE-Lens, at --frontier-k) in tokens_2000000/run_0/

Every arm is experiment.py's run on the embedded default (EXPERIMENT_* as for a run) with the
same cached activations, tokens and seed unless the arm says otherwise: the hierarchical
variants at the study's lr (1e-3), the same at the frontier's lr (3e-4: every baseline family
of run_0/frontier.json was trained at it, so this is the one-lr comparison), and the variant
chosen in SEED_ARMS at seeds 1 and 2. A finished arm whose config.json records exactly its
configuration is reused (so an interrupted ablation resumes). Then writes, for every finished
arm, `ablation.json` and `ablation.md`: absorption on both levels, on the base level alone and
on the concept level alone (SAE-Bench's chain, with the 95% interval over letters), the
frontier's values at the arm's L0, EV, CE score (SAE-Bench's bf16 average and ours in fp32),
L0 per level, concepts alive, NMI and sibling NMI against their nulls, the tree-ness of the
children and sparse probing top-1/top-5 (SAE-Bench's and standardised). Each arm's own folder
holds everything else (absorption_words.jsonl, concepts.html, ...); plot.py draws the figures:
`python plot.py --runs_dir=study/hierarchy_pays --out_dir=study/hierarchy_pays/plots`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
import experiment as E  # noqa: E402
from sae_harness.data.presets import read_run_environment  # noqa: E402
from sae_harness.records.run_directory import (EVALUATIONS, atomic_write_json, holds_finished_run,  # noqa: E402
                                               read_config_json, read_json)

FOLDER = REPO / "study" / "hierarchy_pays"
VARIANTS = ("tuned_cosine", "topk_base", "concept_reconstructs", "nested_topk", "no_balance")
FRONTIER_LR = 3e-4
LATER_VARIANTS = ("concept_batchtopk", "parent_child_orthogonal")
MATCHED_L0 = {"lr": FRONTIER_LR, "l1_base": 0.14}
"""At lr 3e-4 the ReLU base level keeps ~78 latents a token at l1_base 0.1, beyond the TopK and
Matryoshka points (L0 <= 80 in all); the L1 the ReLU frontier's slope (L0 ~ l1^-1.45) gives for
a base L0 of ~50, so the total L0 (~60) is where every family of the frontier has a point."""
ARMS: list[tuple[str, str, dict]] = (
    [(f"run_{i + 1}", variant, {}) for i, variant in enumerate(VARIANTS)]
    + [(f"run_{i + 6}", variant, {"lr": FRONTIER_LR}) for i, variant in enumerate(VARIANTS)]
    + [(f"run_{i + 11}", variant, {}) for i, variant in enumerate(LATER_VARIANTS)]
    + [("run_13", "concept_reconstructs", MATCHED_L0), ("run_14", "tuned_cosine", MATCHED_L0)]
    + [("run_17", "parent_gated", {}), ("run_18", "parent_gated", MATCHED_L0),
       ("run_19", "parent_gated", {"l1_base": 0.04})])
"""(folder, variant, Config overrides): each variant at the study's lr, then at the frontier's;
the variants added later at the study's lr; the two ReLU-based designs at the frontier's lr with
the L1 that brings their L0 back into the frontier's range; the parent-gated variant at both, and
at lr 1e-3 with the L1 that brings its gated base L0 (13 at l1_base 0.1) towards the others'."""
MATRYOSHKA_POINTS = (40, 80)
"""SAE-Lens Matryoshka BatchTopK at these k (build_frontier.py's points, at the frontier's lr),
trained again here to read absorption on its first groups alone (first_128_only_*,
first_512_only_*) beside the whole dictionary: the per-level reading of the baseline."""
SEED_ARMS: list[tuple[str, str, dict]] = [
    ("run_15", "concept_reconstructs", {**MATCHED_L0, "seed": 1}),
    ("run_16", "concept_reconstructs", {**MATCHED_L0, "seed": 2}),
]
"""The design that absorbed least at both lrs (concept_reconstructs: 0.317 vs tuned_cosine's
0.444 at 1e-3, 0.093 vs 0.098 at 3e-4), at the frontier's lr and matched L0, seeds 1 and 2."""

SECOND_BUDGET_ARMS: list[tuple[str, str, dict]] = [
    ("run_1", "concept_reconstructs", MATCHED_L0),
    ("run_2", "concept_reconstructs", {**MATCHED_L0, "seed": 1}),
    ("run_3", "concept_reconstructs", {**MATCHED_L0, "seed": 2}),
    ("run_4", "tuned_cosine", MATCHED_L0),
]
"""The second budget (issue: SAE-Bench warns that undertrained SAEs score low on absorption):
the best design at 3 seeds and the idea's default variant, both at the frontier's lr and the
matched L1, against a TopK and Matryoshka frontier trained at the same budget."""
SECOND_BUDGET_FRONTIER_K = "20,40"
"""At 2M tokens the matched arms' total L0 falls to ~25-30 (base L0 ~18 at a third of the run),
between the k20 and k40 points."""

COLUMNS = [  # (column, group, key, format)
    ("absorption", "absorption", "mean_absorption_fraction_score", ".3f"),
    ("abs. 95% CI low", "absorption", "mean_absorption_fraction_ci95_low", ".3f"),
    ("abs. 95% CI high", "absorption", "mean_absorption_fraction_ci95_high", ".3f"),
    ("abs. base only", "absorption", "base_only_mean_absorption_fraction_score", ".3f"),
    ("abs. concept only", "absorption", "concept_only_mean_absorption_fraction_score", ".3f"),
    ("Matryoshka abs. at L0", "vs_baseline", "matryoshka.absorption_fraction.frontier", ".3f"),
    ("TopK abs. at L0", "vs_baseline", "topk.absorption_fraction.frontier", ".3f"),
    ("ReLU abs. at L0", "vs_baseline", "relu.absorption_fraction.frontier", ".3f"),
    ("EV", "training", "explained_variance", ".3f"),
    ("Matryoshka EV at L0", "vs_baseline", "matryoshka.explained_variance.frontier", ".3f"),
    ("CE score", "core", "ce_loss_score", ".3f"),
    ("CE score fp32", "core", "ce_loss_score_fp32", ".4f"),
    ("L0 base", "training", "l0_base", ".1f"),
    ("L0 concept", "training", "l0_concept", ".1f"),
    ("L0 total", "training", "l0_total", ".1f"),
    ("concepts alive", "hierarchy", "alive_concept_fraction", ".2f"),
    ("NMI", "hierarchy", "nmi_mean", ".3f"),
    ("null NMI", "hierarchy", "null_nmi_mean", ".4f"),
    ("sibling NMI", "hierarchy", "sibling_nmi_mean", ".4f"),
    ("null sibling NMI", "hierarchy", "null_sibling_nmi_mean", ".4f"),
    ("top-10 child share", "hierarchy", "tree_top10_child_share", ".3f"),
    ("coherence", "hierarchy", "concept_coherence_mean", ".3f"),
    ("null coherence", "hierarchy", "null_concept_coherence_mean", ".3f"),
    ("SAE top-1", "sparse_probing", "sae_top_1_test_accuracy", ".3f"),
    ("SAE top-5", "sparse_probing", "sae_top_5_test_accuracy", ".3f"),
    ("SAE top-1 std.", "sparse_probing", "sae_top_1_test_accuracy_standardised", ".3f"),
    ("SAE top-5 std.", "sparse_probing", "sae_top_5_test_accuracy_standardised", ".3f"),
]


def arm_row(folder: Path, variant: str) -> dict:
    info = read_json(folder / "final_info.json")
    config = read_config_json(folder / "config.json")["config"]
    row = {"run": folder.name, "variant": variant, "lr": config["lr"], "seed": config["seed"]}
    for column, group, key, _ in COLUMNS:
        value = info.get(group, {}).get("means", {}).get(key)
        row[column] = value if isinstance(value, (int, float)) else None
    return row


def markdown(rows: list[dict], machine: str, setting: str) -> str:
    head = ["run", "variant", "lr", "seed", *(c for c, *_ in COLUMNS)]
    lines = [f"Hierarchy-pays ablation on {setting} ({machine}); "
             "written by scripts/hierarchy_ablation.py", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["run"], row["variant"], f"{row['lr']:g}", str(row["seed"])]
        cells += ["–" if row[c] is None else format(row[c], spec) for c, _, _, spec in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table-only", action="store_true", help="train nothing")
    parser.add_argument("--no-seeds", action="store_true", help="leave SEED_ARMS out")
    parser.add_argument("--matryoshka", action="store_true",
                        help="also train and score MATRYOSHKA_POINTS (per-group absorption)")
    parser.add_argument("--second-budget", action="store_true",
                        help="SECOND_BUDGET_ARMS and their frontier at EXPERIMENT_TOKENS")
    parser.add_argument("--frontier-k", default=SECOND_BUDGET_FRONTIER_K,
                        help="the second budget's TopK and Matryoshka k (comma-separated)")
    args = parser.parse_args(argv)
    env = read_run_environment()
    if args.second_budget:
        if env.training_tokens is None:
            raise SystemExit("error: --second-budget needs EXPERIMENT_TOKENS (e.g. EXPERIMENT_TOKENS=2000000)")
        return second_budget(env, args.table_only, args.frontier_k)
    rows, machine = [], "?"
    if args.matryoshka and not args.table_only:
        from build_frontier import sae_lens_point

        lm_holder: dict = {}
        for k in MATRYOSHKA_POINTS:
            sae_lens_point(FOLDER / f"matryoshka_k{k}", env, "matryoshka", k, lm_holder)
    for name, variant, overrides in ARMS + ([] if args.no_seeds else SEED_ARMS):
        folder = FOLDER / name
        cfg = E.make_config(variant, env.preset.name, env.training_tokens, overrides)
        if not holds_finished_run(folder, ("training", *EVALUATIONS), cfg):
            if args.table_only:
                print(f"[ablation] {name}: {variant} {overrides} not finished; left out")
                continue
            print(f"[ablation] {name}: {variant} {overrides}", flush=True)
            E.run_experiment(folder, replace(env, variant=variant, overwrite=True), overrides)
        rows.append(arm_row(folder, variant))
        machine = read_json(folder / "config.json")["provenance"].get("device", machine)
    write_tables(FOLDER, rows, machine, [FOLDER / f"matryoshka_k{k}" for k in MATRYOSHKA_POINTS],
                 "the embedded default")
    return 0


def second_budget(env, table_only: bool, frontier_k: str) -> int:
    """SECOND_BUDGET_ARMS at env's token budget, then its TopK/Matryoshka frontier, then the table."""
    folder = FOLDER / f"tokens_{env.training_tokens}"
    rows, machine = [], "?"
    for name, variant, overrides in SECOND_BUDGET_ARMS:
        arm = folder / name
        cfg = E.make_config(variant, env.preset.name, env.training_tokens, overrides)
        if not holds_finished_run(arm, ("training", *EVALUATIONS), cfg):
            if table_only:
                print(f"[ablation] {name}: {variant} {overrides} not finished; left out")
                continue
            print(f"[ablation] {folder.name}/{name}: {variant} {overrides}", flush=True)
            E.run_experiment(arm, replace(env, variant=variant, overwrite=True), overrides)
    if not table_only:  # the frontier at this budget; its build records every arm's vs_baseline
        import build_frontier

        build_frontier.main(["topk", "matryoshka", "--no-seeds", f"--k={frontier_k}",
                             f"--root={folder / 'run_0'}"])
    for name, variant, overrides in SECOND_BUDGET_ARMS:
        if (folder / name / "final_info.json").is_file():
            rows.append(arm_row(folder / name, variant))
            machine = read_json(folder / name / "config.json")["provenance"].get("device", machine)
    write_tables(folder, rows, machine, sorted((folder / "run_0" / "frontier").glob("matryoshka_k*")),
                 f"the embedded default at {env.training_tokens:,} training tokens")
    return 0


def write_tables(folder: Path, rows: list[dict], machine: str, matryoshka_folders: list[Path],
                 setting: str) -> None:
    """ablation.json and ablation.md in `folder`: the arms' rows, then the Matryoshka points'
    absorption on their first groups alone."""
    matryoshka = {}
    for point in matryoshka_folders:
        info_path = point / "final_info.json"
        if info_path.is_file():
            info = read_json(info_path)
            training = info["training"]["means"]
            matryoshka[point.name.removeprefix("matryoshka_")] = {
                "l0_total": training.get("l0_total"), "explained_variance": training.get("explained_variance"),
                **{key: value for key, value in info["absorption"]["means"].items()
                   if "absorption_fraction" in key}}
    atomic_write_json(folder / "ablation.json", {"machine": machine, "setting": setting, "arms": rows,
                                                 "matryoshka_by_group": matryoshka})
    table = markdown(rows, machine, setting)
    if matryoshka:
        table += "\nSAE-Lens Matryoshka BatchTopK (lr 3e-4), absorption on its first groups alone:\n\n"
        table += "| point | L0 | EV | absorption (all) | first 128 only | first 512 only |\n|---|---|---|---|---|---|\n"
        for name, m in matryoshka.items():
            cells = [m.get(key) for key in ("l0_total", "explained_variance", "mean_absorption_fraction_score",
                                            "first_128_only_mean_absorption_fraction_score",
                                            "first_512_only_mean_absorption_fraction_score")]
            table += f"| {name} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |\n"
    (folder / "ablation.md").write_text(table)
    print(table)


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python
"""Build the baseline frontier and the seed spread into run_0/ (sae_harness/records/frontier.py).

    python scripts/build_frontier.py            # the embedded default; EXPERIMENT_* as for a run
    python scripts/build_frontier.py relu --no-seeds   # some families only, no seed runs
    python scripts/build_frontier.py topk matryoshka --no-seeds --k=20,40 --root=DIR
                                                # SAE-Lens points at these k into DIR/ (a
                                                # second budget's frontier; DIR is its run_0)

Trains, on the study's activations, tokens and eval sizes:
  relu        experiment.py's `baseline` variant at l1_base in RELU_L1 (run_0's setting among them)
  topk        SAE-Lens' TopKTrainingSAE + SAETrainer at k in TOPK_K
  matryoshka  SAE-Lens' MatryoshkaBatchTopKTrainingSAE + SAETrainer at k in MATRYOSHKA_K
  seeds       `baseline` and the default variant at SEEDS (seed 0: run_0 and study/run_2 when they
              are finished runs of exactly that configuration, else trained here)
scores every point with the same evals, and writes run_0/frontier.json; each point's run folder
is run_0/frontier/<point>/ (a finished point is reused, so an interrupted build resumes).
Later runs read the frontier (final_info.json's `vs_baseline`); see README, "Fair comparisons".
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
import experiment as E
from sae_harness.records.schemas import FrontierOutput, validated
from sae_harness.evals.evaluations import evaluate_sae
from sae_harness.run.experiment_run import ExperimentRun
from sae_harness.records.frontier import (FRONTIER_FILE, FRONTIER_FORMAT, NORM_BATCHES, SAELensView,
                                          frontier_key, headline_values, record_vs_baseline,
                                          seed_spread, total_l0, train_sae_lens)
from sae_harness.training.one_pass import Job, ThreadedTraining
from sae_harness.evals.heldout import heldout_statistics
from sae_harness.data.presets import read_run_environment
from sae_harness.records.run_directory import (EVALUATIONS, STUDY_DIR, RunDirectory, atomic_write_json,
                                               holds_finished_run, read_config_json, read_json)

RELU_L1 = (0.04, 0.08, 0.16, 0.32)
TOPK_K = (20, 40, 80)
MATRYOSHKA_K = (40, 80)
MATRYOSHKA_WIDTHS = (128, 512)
"""The inner Matryoshka prefixes; the last level is the whole dictionary."""
SEEDS = (0, 1, 2)
SAE_LENS_EVALS = ("core", "sparse_probing", "absorption")


OUR_GROUPS = ("training", *(e for e in EVALUATIONS if e != "hierarchy"))
"""What a finished point of ours holds (a vanilla SAE has no hierarchy group)."""


def matching_run(folder: Path, cfg) -> bool:
    """A finished run folder trained with exactly `cfg` (seed 0 of the seeds can reuse run_0/2)."""
    return holds_finished_run(folder, OUR_GROUPS, cfg)


def our_point(folder: Path, env, variant: str, overrides: dict, reuse: Path | None = None) -> Path:
    cfg = E.make_config(variant, env.preset.name, env.training_tokens, overrides)
    if reuse is not None and matching_run(reuse, cfg):
        print(f"[frontier] {folder.name}: reusing {reuse}")
        return reuse
    if matching_run(folder, cfg):
        print(f"[frontier] {folder.name}: finished before")
        return folder
    print(f"[frontier] {folder.name}: {variant} + {overrides}")
    E.run_experiment(folder, replace(env, variant=variant, overwrite=True), overrides)
    return folder


def sae_lens_point(folder: Path, env, family: str, k: int, lm_holder: dict) -> Path:
    """Train one SAE-Lens SAE on the study's activations and score it like a run."""
    if holds_finished_run(folder, ("training", *SAE_LENS_EVALS)):
        print(f"[frontier] {folder.name}: finished before")
        return folder
    cfg = E.make_config("baseline", env.preset.name, env.training_tokens)
    print(f"[frontier] {folder.name}: SAE-Lens {family}, k {k}, width {cfg.n_base}, lr {cfg.lr}")
    with ExperimentRun.start(folder, replace(env, variant="baseline", overwrite=True), cfg,
                             f"SAE-Lens {family} k={k}") as run:
        if "lm" not in lm_holder:
            lm_holder["lm"] = run.load_language_model()
        lm = lm_holder["lm"]
        data = run.activations(lm)
        started = time.time()
        with tempfile.TemporaryDirectory() as work:
            trained = train_sae_lens(
                family, k, data.d_model, cfg.n_base, data.train.iterate(0, cfg.total_steps + 8),
                cfg.total_steps, cfg.batch_size, cfg.lr, cfg.seed, Path(work),
                [*MATRYOSHKA_WIDTHS, cfg.n_base] if family == "matryoshka" else None)
        seconds = time.time() - started
        sae = SAELensView(trained, run.preset.model_name, run.preset.hook_layer,
                          run.preset.context_length, f"sae_lens_{family}",
                          MATRYOSHKA_WIDTHS if family == "matryoshka" else ()).to(run.preset.device)
        stats = heldout_statistics(sae, data.heldout)
        run.directory.set_group("training", {**stats, "seconds": seconds, "steps": float(cfg.total_steps),
                                             "k": float(k)}, trainer=f"sae_lens SAETrainer ({family})")
        print(f"[frontier] {folder.name}: EV {stats['explained_variance']:.3f}, L0 {stats['l0_total']:.1f}")
        outcome = evaluate_sae(run.directory, sae, lm, run.preset, data.heldout, env.cache_dir,
                               SAE_LENS_EVALS)
        run.directory.set_status("finished", seconds=time.time() - run.started,
                                 phase_seconds={"training": seconds, **outcome.done})
    return folder


def our_job(name: str, cfg, device: str, matmul_dtype=torch.float32) -> Job:
    """experiment.py's trainer for `cfg` as a job of a one-pass training (one_pass.py): built and
    stepped as experiment.train_sae does; finish() returns (SAE, last log values)."""
    held: dict = {}

    def start(first_batch):
        torch.manual_seed(cfg.seed)
        held["trainer"] = E.make_trainer(cfg, first_batch, device, matmul_dtype)

    def step(step: int, x):
        terms = held["trainer"].update(step, x.to(device, non_blocking=True))
        if step == cfg.total_steps - 1:
            held["values"] = held["trainer"].log_values(step, terms)

    def finish():
        trainer = held["trainer"]
        trainer.sae.fold_input_scale_(trainer.input_scale)
        trainer.sae.eval()
        return trainer.sae, held["values"]

    return Job(name, cfg.seed, cfg.total_steps, start, step, finish)


def sae_lens_job(name: str, family: str, k: int, d_in: int, cfg, work_dir: Path) -> Job:
    """SAE-Lens' trainer for one TopK or Matryoshka point as a job of a one-pass training, in a
    thread (SAETrainer.fit owns its loop); finish() returns the inference SAE."""
    held: dict = {}

    def train(batches):
        return train_sae_lens(family, k, d_in, cfg.n_base, batches, cfg.total_steps, cfg.batch_size,
                              cfg.lr, cfg.seed, work_dir,
                              [*MATRYOSHKA_WIDTHS, cfg.n_base] if family == "matryoshka" else None)

    def start(first_batch):
        held["thread"] = ThreadedTraining(train, name)

    def step(step: int, x):
        held["thread"].give(x.clone())  # its own copy: SAE-Lens may scale a batch in place

    return Job(name, cfg.seed, cfg.total_steps + NORM_BATCHES, start, step, lambda: held["thread"].result())


def point_record(family: str, name: str, parameter: dict, seed: int, folder: Path) -> dict:
    info = read_json(folder / "final_info.json")
    status = read_json(folder / "run_status.json")
    return {"family": family, "name": name, "parameter": parameter, "seed": seed,
            "l0_total": total_l0(info), "metrics": headline_values(info),
            "seconds": status.get("seconds"), "folder": str(folder.relative_to(REPO))
            if folder.is_relative_to(REPO) else str(folder)}


FAMILIES = ("relu", "topk", "matryoshka")


def parse_arguments(argv: list[str]):
    """The command line (module docstring); an unknown option or family stops with argparse's line."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("families", nargs="*", help=f"the families to train, of {', '.join(FAMILIES)} "
                                                     "(default: all three)")
    parser.add_argument("--no-seeds", action="store_true", help="no seed runs")
    parser.add_argument("--k", help="comma-separated k of the TopK and Matryoshka points "
                                    f"(default: {TOPK_K} and {MATRYOSHKA_K})")
    parser.add_argument("--root", type=Path, help="the frontier's run_0 folder (default: run_0/)")
    args = parser.parse_args(argv)
    unknown = [family for family in args.families if family not in FAMILIES]
    if unknown:
        parser.error(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                     f"choose from {', '.join(FAMILIES)}")
    return args


def main(argv: list[str]) -> None:
    args = parse_arguments(argv)
    seeds_wanted = not args.no_seeds
    wanted = args.families or list(FAMILIES)
    topk_k, matryoshka_k = ((TOPK_K, MATRYOSHKA_K) if args.k is None else
                            (tuple(int(k) for k in args.k.split(",")),) * 2)
    env = read_run_environment({"EXPERIMENT_PRESET": "embedded", **os.environ})
    root = (args.root or REPO / "run_0").resolve()
    points_dir = root / "frontier"
    started = time.time()
    points, lm_holder = [], {}
    base_l1 = E.make_config("baseline", env.preset.name).l1_base
    for l1 in RELU_L1 if "relu" in wanted else ():
        folder = our_point(points_dir / f"relu_l1_{l1:g}", env, "baseline", {"l1_base": l1},
                           reuse=root if l1 == base_l1 else None)
        points.append(point_record("relu", f"relu_l1_{l1:g}", {"l1_base": l1}, 0, folder))
    for family, ks in (("topk", topk_k), ("matryoshka", matryoshka_k)):
        for k in ks if family in wanted else ():
            folder = sae_lens_point(points_dir / f"{family}_k{k}", env, family, k, lm_holder)
            points.append(point_record(family, f"{family}_k{k}", {"k": k}, 0, folder))
    frontier_seconds = time.time() - started

    seeds: dict[str, list[dict]] = {}
    for variant, reuse in (("baseline", root), (E.DEFAULT_VARIANT, REPO / STUDY_DIR / "run_2")):
        for seed in SEEDS if seeds_wanted else ():
            folder = our_point(points_dir / "seeds" / f"{variant}_seed{seed}", env, variant,
                               {"seed": seed}, reuse=reuse if seed == 0 else None)
            info = read_json(folder / "final_info.json")
            seeds.setdefault(variant, []).append({"seed": seed, "l0_total": total_l0(info),
                                                  **headline_values(info)})
    spread = seed_spread({variant: runs for variant, runs in seeds.items()})
    spread["runs"] = seeds
    first = Path(points[0]["folder"])
    config = read_config_json((first if first.is_absolute() else REPO / first) / "config.json")
    frontier = {"format": FRONTIER_FORMAT, "key": frontier_key(config),
                "machine": config["provenance"]["device"],
                "lr": {"relu": E.make_config("baseline", env.preset.name).lr,
                       "topk": E.make_config("baseline", env.preset.name).lr,
                       "matryoshka": E.make_config("baseline", env.preset.name).lr},
                "width": E.make_config("baseline", env.preset.name).n_base,
                "families_built": wanted, "seeds_built": seeds_wanted,
                "points": points, "seed_spread": spread,
                "seconds": {"frontier": frontier_seconds, "with_seeds": time.time() - started}}
    atomic_write_json(root / FRONTIER_FILE, validated(FrontierOutput, frontier))
    print(f"[frontier] {len(points)} points and {sum(map(len, seeds.values()))} seed runs -> "
          f"{root / FRONTIER_FILE} in {time.time() - started:.0f} s")
    made_before = ([*sorted(REPO.glob("run_[0-9]*")), *sorted((REPO / STUDY_DIR).glob("run_[0-9]*"))]
                   if root == REPO / "run_0" else sorted(root.parent.glob("run_[0-9]*")))
    for run in made_before:  # the runs made before the frontier (the loop's, the study's, or
        # those beside another root) read it now
        if (run / "final_info.json").exists() and (run / "config.json").exists():
            for line in record_vs_baseline(RunDirectory(run)):
                print(f"{run.name}: {line}")
    print(json.dumps({p["name"]: (round(p["l0_total"], 1), {m: round(v, 3) for m, v in p["metrics"].items()})
                      for p in points}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])

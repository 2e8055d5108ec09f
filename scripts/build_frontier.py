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
With EXPERIMENT_ACTIVATION_CACHE=off (streamed, as the real setting's budget must be) every
unfinished point, seeds included, trains from one pass of the model (one_pass.py) instead of a
pass each, then each is scored in its folder. --l1=0.04,0.08 picks the ReLU points.
Later runs read the frontier (final_info.json's `vs_baseline`); see README, "Fair comparisons".
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

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
from sae_harness.data.activations import ActivationData
from sae_harness.evals.heldout import heldout_statistics
from sae_harness.training.one_pass import sae_lens_job, train_in_one_pass, trainer_job
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


def wanted_groups(groups: tuple[str, ...]) -> tuple[str, ...]:
    """`groups` less the evaluations EXPERIMENT_EVALS leaves out (training is always wanted)."""
    asked = read_run_environment({"EXPERIMENT_PRESET": "embedded", **os.environ}).evaluations
    return tuple(g for g in groups if g == "training" or g in asked)


def matching_run(folder: Path, cfg) -> bool:
    """A finished run folder trained with exactly `cfg` (seed 0 of the seeds can reuse run_0/2)."""
    return holds_finished_run(folder, wanted_groups(OUR_GROUPS), cfg)


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


def sae_lens_point(folder: Path, env, family: str, k: int, lm_holder: dict,
                   overrides: dict | None = None) -> Path:
    """Train one SAE-Lens SAE on the study's activations and score it like a run (its budget,
    batch, width and lr are the `baseline` Config's, with `overrides`)."""
    if holds_finished_run(folder, wanted_groups(("training", *SAE_LENS_EVALS))):
        print(f"[frontier] {folder.name}: finished before")
        return folder
    cfg = E.make_config("baseline", env.preset.name, env.training_tokens, overrides)
    print(f"[frontier] {folder.name}: SAE-Lens {family}, k {k}, width {cfg.n_base}, lr {cfg.lr}")
    with ExperimentRun.start(folder, replace(env, variant="baseline", overwrite=True), cfg,
                             f"SAE-Lens {family} k={k}") as run:
        if "lm" not in lm_holder:
            lm_holder["lm"] = run.load_language_model()
        lm = lm_holder["lm"]
        # SAE-Lens reads NORM_BATCHES more batches (its normalisation estimate): from a cache
        # they start its next epoch, and a stream holds as many more rows
        data = run.activations(lm, stream_extra_tokens=NORM_BATCHES * cfg.batch_size)
        started = time.time()
        with tempfile.TemporaryDirectory() as work:
            trained = train_sae_lens(
                family, k, data.d_model, cfg.n_base, data.train.iterate(0, cfg.total_steps + NORM_BATCHES),
                cfg.total_steps, cfg.batch_size, cfg.lr, cfg.seed, Path(work),
                [*MATRYOSHKA_WIDTHS, cfg.n_base] if family == "matryoshka" else None)
        score_sae_lens(run, trained, family, k, cfg, lm, data.heldout, time.time() - started)
    return folder


def score_sae_lens(run: ExperimentRun, trained, family: str, k: int, cfg, lm, heldout, seconds: float,
                   **training) -> None:
    """A trained SAE-Lens SAE's training group and evaluations in its run folder, as a run's."""
    trained.save_model(run.directory.sae_dir)  # SAE-Lens' inference format, for a later rescoring
    sae = SAELensView(trained, run.preset.model_name, run.preset.hook_layer,
                      run.preset.context_length, f"sae_lens_{family}",
                      MATRYOSHKA_WIDTHS if family == "matryoshka" else ()).to(run.preset.device)
    stats = heldout_statistics(sae, heldout)
    run.directory.set_group("training", {**stats, "seconds": seconds, "steps": float(cfg.total_steps),
                                         "k": float(k), **training},
                            trainer=f"sae_lens SAETrainer ({family})")
    print(f"[frontier] {run.directory.path.name}: EV {stats['explained_variance']:.3f}, L0 {stats['l0_total']:.1f}")
    outcome = evaluate_sae(run.directory, sae, lm, run.preset, heldout, run.env.cache_dir,
                           tuple(name for name in SAE_LENS_EVALS if name in run.env.evaluations))
    run.directory.set_status("finished", seconds=time.time() - run.started,
                             phase_seconds={"training": seconds, **outcome.done})


@dataclass
class Point:
    """One SAE of the frontier: ours (a variant and Config overrides) or SAE-Lens' (family, k)."""

    family: str
    name: str
    folder: Path
    parameter: dict
    seed: int = 0
    variant: str = "baseline"
    overrides: dict = field(default_factory=dict)
    reuse: Path | None = None

    @property
    def sae_lens(self) -> bool:
        return self.family in ("topk", "matryoshka")

    def config(self, env):
        return E.make_config(self.variant, env.preset.name, env.training_tokens, self.overrides)

    def finished(self, env) -> Path | None:
        """The folder holding this point finished (its own, or the run it may reuse), else None."""
        if self.sae_lens:
            return (self.folder if holds_finished_run(self.folder, wanted_groups(("training", *SAE_LENS_EVALS)))
                    else None)
        cfg = self.config(env)
        for folder in (self.reuse, self.folder):
            if folder is not None and matching_run(folder, cfg):
                return folder
        return None

    def train_alone(self, env, lm_holder: dict) -> Path:
        """This point through its own pass (from the cache, when the activations are cached)."""
        if self.sae_lens:
            return sae_lens_point(self.folder, env, self.family, self.parameter["k"], lm_holder,
                                  self.overrides)
        return our_point(self.folder, env, self.variant, self.overrides, self.reuse)


def train_in_one_pass_and_score(points: list[Point], env) -> dict[str, Path]:
    """Every unfinished point from one streamed pass of the model (one_pass.py), then each scored
    like a run in its folder (a failed evaluation is recorded there, as in a run); returns their
    folders by name. The points share the training budget, held-out tokens and batch."""
    pending = [point for point in points if point.finished(env) is None]
    if not pending:
        return {}
    configs = [point.config(env) for point in pending]
    base = configs[0]
    if len({(c.training_tokens, c.heldout_tokens, c.batch_size) for c in configs}) > 1:
        raise SystemExit("error: the frontier's points differ in tokens or batch; they cannot share one pass")
    print(f"[frontier] one pass of the model for {len(pending)} SAEs: {', '.join(p.name for p in pending)}")
    with ExitStack() as stack, tempfile.TemporaryDirectory() as work:
        runs = [stack.enter_context(ExperimentRun.start(
                    point.folder, replace(env, variant=point.variant, overwrite=True), cfg,
                    f"SAE-Lens {point.family} k={point.parameter['k']}" if point.sae_lens else ""))
                for point, cfg in zip(pending, configs)]
        lm = runs[0].load_language_model()
        preset, d_in = runs[0].preset, lm.model.cfg.d_model
        jobs = [sae_lens_job(point.name, point.family, point.parameter["k"], d_in, cfg, Path(work) / point.name,
                             [*MATRYOSHKA_WIDTHS, cfg.n_base] if point.family == "matryoshka" else None)
                if point.sae_lens else
                trainer_job(point.name, cfg, E.make_trainer, preset.device, run.precision.sae_torch_dtype)
                for point, cfg, run in zip(pending, configs, runs)]
        started = time.time()
        heldout = train_in_one_pass(lm, preset, base.training_tokens, base.heldout_tokens, base.batch_size,
                                    jobs, env.stream_buffer_rows, env.stream_shares or 1)
        seconds = time.time() - started
        print(f"[frontier] one pass: {len(jobs)} SAEs trained in {seconds:.0f} s")
        data = ActivationData(heldout, None, None, cache_hit=False, collect_seconds=0.0)
        shared = {"one_pass_saes": float(len(jobs)), "one_pass_seconds": seconds}
        for point, cfg, run, job in zip(pending, configs, runs, jobs):
            if point.sae_lens:
                score_sae_lens(run, job.result, point.family, point.parameter["k"], cfg, lm, heldout,
                               seconds, **shared)
            else:
                sae, summary = job.result
                run.record_training(sae, {**summary, **shared, "seconds": seconds,
                                          "tokens_per_second": summary["tokens"] / seconds}, data, started)
                run.evaluate(sae, lm, data)
    return {point.name: point.folder for point in pending}


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
    parser.add_argument("--l1", help=f"comma-separated l1_base of the ReLU points (default: {RELU_L1})")
    parser.add_argument("--root", type=Path, help="the frontier's run_0 folder (default: run_0/)")
    args = parser.parse_args(argv)
    unknown = [family for family in args.families if family not in FAMILIES]
    if unknown:
        parser.error(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                     f"choose from {', '.join(FAMILIES)}")
    return args


def main(argv: list[str], environment=None, overrides: dict | None = None) -> None:
    """`environment`: a RunEnvironment instead of the EXPERIMENT_* variables; `overrides`: Config
    fields every point shares (tests shrink the SAEs and the budget with them)."""
    common = dict(overrides or {})
    args = parse_arguments(argv)
    seeds_wanted = not args.no_seeds
    wanted = args.families or list(FAMILIES)
    topk_k, matryoshka_k = ((TOPK_K, MATRYOSHKA_K) if args.k is None else
                            (tuple(int(k) for k in args.k.split(",")),) * 2)
    relu_l1 = RELU_L1 if args.l1 is None else tuple(float(l1) for l1 in args.l1.split(","))
    env = environment or read_run_environment({"EXPERIMENT_PRESET": "embedded", **os.environ})
    root = (args.root or REPO / "run_0").resolve()
    points_dir = root / "frontier"
    started = time.time()
    base_l1 = E.make_config("baseline", env.preset.name).l1_base
    frontier = [Point("relu", f"relu_l1_{l1:g}", points_dir / f"relu_l1_{l1:g}", {"l1_base": l1},
                      overrides={**common, "l1_base": l1}, reuse=root if l1 == base_l1 else None)
                for l1 in (relu_l1 if "relu" in wanted else ())]
    frontier += [Point(family, f"{family}_k{k}", points_dir / f"{family}_k{k}", {"k": k}, overrides=common)
                 for family, ks in (("topk", topk_k), ("matryoshka", matryoshka_k))
                 for k in (ks if family in wanted else ())]
    seed_points = [Point(variant, f"{variant}_seed{seed}", points_dir / "seeds" / f"{variant}_seed{seed}",
                         {"seed": seed}, seed, variant, {**common, "seed": seed}, reuse if seed == 0 else None)
                   for variant, reuse in (("baseline", root), (E.DEFAULT_VARIANT, REPO / STUDY_DIR / "run_2"))
                   for seed in (SEEDS if seeds_wanted else ())]
    one_pass = env.activation_cache == "off"  # streamed: the model runs once for every SAE
    trained = train_in_one_pass_and_score(frontier + seed_points, env) if one_pass else {}
    lm_holder: dict = {}

    def folder_of(point: Point) -> Path:
        return trained.get(point.name) or point.finished(env) or point.train_alone(env, lm_holder)

    points = [point_record(point.family, point.name, point.parameter, 0, folder_of(point)) for point in frontier]
    frontier_seconds = time.time() - started  # with one pass: the seeds' training and evals too

    seeds: dict[str, list[dict]] = {}
    for point in seed_points:
        info = read_json(folder_of(point) / "final_info.json")
        seeds.setdefault(point.variant, []).append({"seed": point.seed, "l0_total": total_l0(info),
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

"""The baseline frontier: the field's SAEs across sparsities, and every run read against it.

SAE-Bench's authors compare SAEs at equal sparsity, because almost every metric moves with L0.
`scripts/build_frontier.py` trains, on the same cached activations, tokens and seed as the study's
runs, three families at several sparsities:

* `relu`: the vanilla ReLU+L1 baseline (experiment.py's `baseline` variant, as the template
  trains it) at several l1_base, run_0 being one of its points;
* `topk`: SAE-Lens' own TopKTrainingSAE trained by SAE-Lens' SAETrainer (the field's code, fed our
  activations) at several k;
* `matryoshka`: SAE-Lens' MatryoshkaBatchTopKTrainingSAE at several k (the literature's best
  architecture on absorption);

and scores each with the same SAE-Bench evals (core, sparse probing, absorption) and held-out
explained variance. It also retrains the baseline and the default variant with more seeds for
the seed spread. Everything is written to `run_0/frontier.json` (each point's run folder under
`run_0/frontier/`), keyed by what determines it (FrontierKey).

Every later run then gets a `vs_baseline` group in final_info.json (`compare_with_frontier`):
for each headline metric and family, the frontier's value interpolated (linearly in log L0)
at the run's total L0 and the difference; outside a family's L0 range it says so instead of
extrapolating, and a difference smaller than twice the seed spread is marked within seed noise.
The hierarchy metric has no frontier value (the frontier's SAEs have no concept level).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn

from pydantic import ValidationError

from sae_harness.records.numbers import finite_number
from sae_harness.records.schemas import FrontierOutput, VsBaselineExtra, validated
from sae_harness.records.run_directory import BASELINE_RUN, baseline_run_dir, read_config_json, read_json

FRONTIER_FILE = "frontier.json"
FRONTIER_FORMAT = 1

HEADLINE_METRICS: dict[str, tuple[str, str]] = {
    "explained_variance": ("training", "explained_variance"),
    "ce_loss_score": ("core", "ce_loss_score"),
    "absorption_fraction": ("absorption", "mean_absorption_fraction_score"),
    "sae_top_1": ("sparse_probing", "sae_top_1_test_accuracy"),
    "sae_top_5": ("sparse_probing", "sae_top_5_test_accuracy"),
}
"""Metric name -> (final_info group, key): the figures read against the frontier."""

NOISE_FACTOR = 2.0
"""A difference smaller than this many seed spreads is marked 'within seed noise'."""


def headline_values(final_info: dict) -> dict[str, float]:
    """The headline metrics a run's final_info.json holds (missing ones left out)."""
    values = {}
    for name, (group, key) in HEADLINE_METRICS.items():
        value = finite_number(final_info.get(group, {}).get("means", {}).get(key))
        if value is not None:
            values[name] = value
    return values


def total_l0(final_info: dict) -> float | None:
    return final_info.get("training", {}).get("means", {}).get("l0_total")


def frontier_key(config: dict) -> dict:
    """What a frontier depends on, from a run's config.json: model, hook, activation dtype, text,
    token budget, batch and seed of the data order, eval sizes."""
    preset, cfg = config["preset"], config["config"]
    model_dtype = (config.get("precision") or {}).get("model_dtype", preset.get("model_dtype"))
    return {"model_name": preset["model_name"], "hook_layer": preset["hook_layer"],
            "text_dataset": preset["text_dataset"], "model_dtype": model_dtype,
            "training_tokens": cfg["training_tokens"], "heldout_tokens": cfg["heldout_tokens"],
            "eval_sizes": preset["eval_sizes"]}


def frontier_path(run_dir: Path) -> Path:
    """Where a run looks for the frontier: its baseline's run_0/frontier.json, the run_0 beside
    it or, for a study run (study/run_2), the top-level run_0 (run_directory.baseline_run_dir)."""
    run_dir = Path(run_dir)
    baseline = baseline_run_dir(run_dir.parent) or run_dir.parent / BASELINE_RUN
    return baseline / FRONTIER_FILE


# --- interpolation ---------------------------------------------------------------------------
def interpolate_at_l0(points: list[tuple[float, float]], l0: float) -> float | None:
    """The value at `l0` on the piecewise-linear curve through (L0, value) points, linear in
    log L0; None outside [min L0, max L0] (no extrapolation)."""
    points = sorted(p for p in points if p[0] > 0)
    if not points or l0 <= 0 or l0 < points[0][0] or l0 > points[-1][0]:
        return None
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= l0 <= x1:
            if x1 == x0:
                return (y0 + y1) / 2
            t = (math.log(l0) - math.log(x0)) / (math.log(x1) - math.log(x0))
            return y0 + t * (y1 - y0)
    return points[0][1]  # a single point at exactly this L0


def compare_with_frontier(final_info: dict, frontier: dict) -> tuple[dict[str, float], dict]:
    """The `vs_baseline` group: (means, extra). Means hold, per family and metric,
    `<family>.<metric>.frontier` and `<family>.<metric>.difference` (run minus frontier) where
    the run's L0 is inside the family's range, plus `l0_total`. Extra says which families were
    out of range and which differences are within seed noise."""
    l0 = total_l0(final_info)
    if l0 is None:
        raise ValueError("the run has no total L0 (training group), nothing to compare at")
    run_values = headline_values(final_info)
    spread = frontier.get("seed_spread", {}).get("max_std", {})
    means: dict[str, float] = {"l0_total": float(l0)}
    out_of_range, within_noise = {}, []
    for family, points in sorted(families(frontier).items()):
        l0s = [p["l0_total"] for p in points]
        for metric, value in run_values.items():
            curve = [(p["l0_total"], p["metrics"][metric]) for p in points if metric in p["metrics"]]
            if not curve:
                continue  # the family has no value for this metric (e.g. its eval failed)
            at = interpolate_at_l0(curve, l0)
            if at is None:
                out_of_range[family] = (f"L0 {l0:.1f} is outside {family}'s L0 range "
                                        f"[{min(l0s):.1f}, {max(l0s):.1f}]")
                continue
            means[f"{family}.{metric}.frontier"] = at
            means[f"{family}.{metric}.difference"] = value - at
            if metric in spread and abs(value - at) < NOISE_FACTOR * spread[metric]:
                within_noise.append(f"{family}.{metric}")
    extra = {"out_of_range": out_of_range, "within_seed_noise": within_noise,
             "seed_spread": spread, "noise_rule": f"|difference| < {NOISE_FACTOR:g} x the larger "
                                                   "seed standard deviation (baseline, default variant)"}
    return means, extra


def record_vs_baseline(directory) -> list[str]:
    """Write (or replace) a finished run's `vs_baseline` group from run_0/frontier.json, or
    record in run_status.json why there is none; returns the lines to print."""
    frontier, why = read_frontier(directory.path, read_config_json(directory.file("config.json")))
    if frontier is not None:
        try:
            means, extra = compare_with_frontier(directory.final_info(), frontier)
        except ValueError as error:
            frontier, why = None, str(error)
    if frontier is None:
        directory.remove_group("vs_baseline")
        directory.record_outcome("skipped", "vs_baseline", why)
        return [f"[vs_baseline] skipped: {why}"]
    directory.set_group("vs_baseline", means, **validated(VsBaselineExtra, extra))
    directory.clear_outcome("vs_baseline")
    lines = []
    for family in sorted({name.split(".")[0] for name in means if "." in name}):
        parts = [f"{name.split('.')[1]} {value:+.3f}" for name, value in means.items()
                 if name.startswith(family + ".") and name.endswith(".difference")]
        lines.append(f"[vs_baseline] at L0 {means['l0_total']:.1f} vs {family}: " + ", ".join(parts))
    lines += [f"[vs_baseline] {reason}" for reason in extra["out_of_range"].values()]
    return lines


def vs_baseline_summary(final_info: dict) -> str | None:
    """One line of the vs_baseline group for notes.txt: per family, each metric's difference
    at the run's L0, '~' where within seed noise; the families out of range named."""
    group = final_info.get("vs_baseline")
    if not group:
        return None
    means, noisy = group["means"], set(group.get("within_seed_noise", []))
    parts = []
    for family in sorted({name.split(".")[0] for name in means if "." in name}):
        values = [f"{metric} {means[f'{family}.{metric}.difference']:+.3f}"
                  + ("~" if f"{family}.{metric}" in noisy else "")
                  for metric in HEADLINE_METRICS if f"{family}.{metric}.difference" in means]
        parts.append(f"{family}: " + ", ".join(values))
    parts += [f"{family} out of range" for family in sorted(group.get("out_of_range", {}))]
    return (f"run minus the baseline frontier at L0 {means['l0_total']:.1f} ('~' within seed "
            f"noise): " + "; ".join(parts))


def families(frontier: dict) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for point in frontier["points"]:
        grouped.setdefault(point["family"], []).append(point)
    return grouped


def read_frontier(run_dir: Path, config: dict) -> tuple[dict | None, str]:
    """(frontier, '') when run_0/frontier.json exists and matches this run's key, else
    (None, why not, with how to make it)."""
    path = frontier_path(run_dir)
    how = "make it with `python scripts/build_frontier.py` (once per setting; README)"
    if not path.exists():
        return None, f"no baseline frontier at {path}; {how}"
    frontier = read_json(path)
    if frontier.get("format") != FRONTIER_FORMAT:
        return None, f"{path} has format {frontier.get('format')}, not {FRONTIER_FORMAT}; {how}"
    try:
        validated(FrontierOutput, frontier)
    except ValidationError as error:
        first = error.errors()[0]["loc"]
        return None, f"{path} does not fit its schema ({error.error_count()} errors: {first}); {how}"
    key = frontier_key(config)
    if frontier.get("key") != key:
        differ = sorted(k for k in key if frontier.get("key", {}).get(k) != key[k])
        return None, f"{path} was built for another setting (differs in {', '.join(differ)}); {how}"
    return frontier, ""


def seed_spread(by_family: dict[str, list[dict[str, float]]]) -> dict:
    """Per family (e.g. 'baseline', 'tuned_cosine'), each metric's mean and sample standard
    deviation over its seeds; `max_std`: the larger std per metric (the noise the marks use)."""
    spread: dict = {"families": {}, "max_std": {}}
    for family, runs in by_family.items():
        stats = {}
        for metric in HEADLINE_METRICS:
            values = [run[metric] for run in runs if metric in run]
            if len(values) >= 2:
                mean = sum(values) / len(values)
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                stats[metric] = {"mean": mean, "std": std, "seeds": len(values), "values": values}
                spread["max_std"][metric] = max(spread["max_std"].get(metric, 0.0), std)
        spread["families"][family] = stats
    return spread


# --- SAE-Lens' SAEs, seen as SAE-Bench and the harness see ours ------------------------------------
class LevelsOutput(NamedTuple):
    """What heldout_statistics reads of an SAE with one level."""

    x_hat: torch.Tensor
    z1: torch.Tensor
    z2_values: torch.Tensor
    z2_indices: torch.Tensor


class SAELensView(nn.Module):
    """An SAE-Lens inference SAE (TopK, or the JumpReLU a Matryoshka SAE becomes) behind the
    SAE-Bench custom-SAE interface our evals use (encode, decode, W_dec, W_enc, b_enc, cfg,
    device, dtype) and `forward_levels` for the held-out statistics; SAE-Lens' own encode and
    decode do the work."""

    def __init__(self, sae, model_name: str, hook_layer: int, context_size: int, architecture: str,
                 group_widths: tuple[int, ...] = ()):
        from sae_bench.custom_saes.custom_sae_config import CustomSAEConfig

        super().__init__()
        self.sae = sae
        self.d_in, self.n_base, self.n_concept = sae.cfg.d_in, sae.cfg.d_sae, 0
        self.group_widths = tuple(w for w in group_widths if w < self.n_base)
        """A Matryoshka SAE's inner prefix widths (its groups' ends before the whole dictionary)."""
        self.kept_latents: int | None = None
        """`encode` gives only the first kept_latents latents (the rest as 0); None: all."""
        self.dtype, self.device = torch.float32, torch.device("cpu")
        self.cfg = CustomSAEConfig(
            model_name=model_name, d_in=self.d_in, d_sae=self.n_base, hook_layer=hook_layer,
            hook_name=f"blocks.{hook_layer}.hook_resid_post", context_size=context_size,
            architecture=architecture, apply_b_dec_to_input=True, dtype="float32", device="cpu")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.sae.encode(x.to(self.dtype))
        if self.kept_latents is not None:
            z = torch.cat([z[..., :self.kept_latents], torch.zeros_like(z[..., self.kept_latents:])], -1)
        return z

    def level_views(self) -> list[tuple[str, SAELensView]]:
        """(name, copy) of each inner Matryoshka prefix alone (`first_<w>_only`), as the
        absorption eval scores them besides the whole dictionary."""
        views = []
        for width in self.group_widths:
            view = copy.deepcopy(self)
            view.kept_latents = width
            views.append((f"first_{width}_only", view))
        return views

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(latents.to(self.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def forward_levels(self, x: torch.Tensor) -> LevelsOutput:
        z = self.encode(x)
        empty = z.new_zeros(len(z), 0)
        return LevelsOutput(self.decode(z), z, empty, empty.long())

    @property
    def W_dec(self) -> torch.Tensor:
        return self.sae.W_dec

    @property
    def W_enc(self) -> torch.Tensor:
        return self.sae.W_enc

    @property
    def b_enc(self) -> torch.Tensor:
        return self.sae.b_enc

    @property
    def b_dec(self) -> torch.Tensor:
        return self.sae.b_dec

    def to(self, *args, **kwargs):
        # SAE-Lens' own `to` (not nn.Module's, which casts the weights but leaves SAE-Lens'
        # dtype attribute behind, so its encode would cast inputs back to float32)
        self.sae.to(*args, **kwargs)
        self.device, self.dtype = self.sae.W_dec.device, self.sae.W_dec.dtype
        self.cfg.device, self.cfg.dtype = str(self.device), str(self.dtype).split(".")[1]
        return self


def train_sae_lens(family: str, k: int, d_in: int, d_sae: int, batches, steps: int,
                   batch_size: int, lr: float, seed: int, work_dir: Path,
                   matryoshka_widths: list[int] | None = None):
    """Train SAE-Lens' TopK or Matryoshka BatchTopK training SAE with SAE-Lens' SAETrainer on
    `batches` (an iterator of (batch_size, d_in) activations; its first NORM_BATCHES estimate the
    input normalisation, as SAE-Lens does, and are seen again in training) and return the
    inference SAE SAE-Lens saves (TopK, or JumpReLU for Matryoshka) loaded back from disk."""
    from sae_lens import (SAE, MatryoshkaBatchTopKTrainingSAE, MatryoshkaBatchTopKTrainingSAEConfig,
                          SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig)
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(seed)
    common = dict(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu",
                  normalize_activations="expected_average_only_in")
    if family == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common))
    elif family == "matryoshka":
        sae = MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(
            **common, matryoshka_widths=list(matryoshka_widths or [d_sae])))
    else:
        raise ValueError(f"unknown SAE-Lens family {family!r}")
    trainer_cfg = SAETrainerConfig(total_training_samples=steps * batch_size,
                                   train_batch_size_samples=batch_size, lr=lr, lr_end=lr / 10,
                                   device="cpu",
                                   n_batches_for_norm_estimate=NORM_BATCHES)
    trained = SAETrainer(trainer_cfg, sae, (b.float() for b in batches)).fit()
    trained.save_inference_model(work_dir)
    return SAE.load_from_disk(work_dir, device="cpu")


def main(argv: list[str]) -> int:
    """python -m sae_harness.records.frontier run_i ...: (re)write the runs' vs_baseline groups, e.g.
    for runs finished before the frontier was built."""
    from sae_harness.records.run_directory import RunDirectory

    for name in argv:
        for line in record_vs_baseline(RunDirectory(Path(name))):
            print(f"{name}: {line}")
    return 0


NORM_BATCHES = 8
"""Batches SAE-Lens' trainer reads to estimate the input scale (its default is 1000, more than
the embedded run has)."""


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))

"""Compare runs: PNG figures and a markdown table of headline metrics.

    python plot.py                                          every run here, into plots/
    python plot.py --runs_dir=study --out_dir=study/plots   the committed study, with run_0

Every run_*/final_info.json under --runs_dir is read and drawn (our {group: {"means": ...}} shape
or the legacy flat AI-Scientist dict), with config.json, run_status.json, training_log.jsonl and
the eval JSONs beside it; when --runs_dir holds no run_0, the baseline run_0 one folder up is
drawn too (a study folder's runs are compared with the template's run_0). A run's label is its
entry in `labels` when there is one, else its variant's title (config.json's `variant_title`),
else 'run_i (variant)'; a name in `labels` with no run is reported. A run that lacks a group or a
file is reported and left out of the panels that need it.

Figures (in --out_dir):
    sparse_probing.png   top-k probe accuracy vs k: the LLM's residual stream and each SAE
    absorption.png       mean absorption fraction, full absorption, split features per run
    l0_vs_ev.png         L0 per level (base, concept, total) against explained variance
    hierarchy.png        hierarchy consistency (MI, NMI, H(b|c), P(b|c), leakage) vs random null
    weights.png          weight-norm / W_enc2 histograms per level (weights.json)
    training.png         every logged number against training tokens (a panel each; new ones too)
    concept_diagnostics.png  what decides the concept level's fate: each loss term's share of the
                         concept encoder's gradient, pre-activations, latents alive (early, whole)
    frontier.png         each headline metric against total L0: the baseline frontier
                         (the baseline's run_0/frontier.json: ReLU, SAE-Lens TopK and Matryoshka) as curves,
                         each run as a point with its seed spread where measured

The table's "vs <family> at equal L0" columns are each run's `vs_baseline` differences (run minus
frontier at the run's L0); "~" marks a difference within seed noise, "out" an L0 outside the
family's range.

Degenerate SAEs (DESIGN 7) are marked: '(degenerate)' in their legend label, hatched bars,
dashed or hollow markers, and a note in the figure title.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402

from pydantic import ValidationError  # noqa: E402

from sae_harness.records.schemas import WeightsOutput  # noqa: E402
from sae_harness.records.study_table import markdown_table  # noqa: E402
from sae_harness.evals.sparse_probing import K_VALUES  # noqa: E402
from sae_harness.records.run_directory import (BASELINE_RUN, FINAL_INFO, RunRecord,  # noqa: E402
                                               baseline_run_dir, load_run, read_training_log, run_number)

# Legend labels by run folder; a run without an entry is labelled by its variant's title. Add an
# entry for each run you make (every run_* folder with a final_info.json is drawn either way).
labels = {
    "run_0": "Baseline (vanilla ReLU SAE)",
}

ALL_LATENTS_X = 120  # where the probe on all latents / all dimensions sits on the k axis
DEGENERATE_HATCH = "//"
DEGENERATE_NOTE = "hatched / dashed / hollow = degenerate SAE (see the table)"

plt.rcParams.update({
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9.5,
    "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13, "savefig.dpi": 120,
    "axes.grid": True, "grid.alpha": 0.3,
})


@dataclass
class Run:
    """A run as shown: its files, its legend label and its colour."""

    record: RunRecord
    label: str
    color: str

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def legend(self) -> str:
        return f"{self.label} (degenerate)" if self.record.degenerate else self.label

    def metric(self, group: str, name: str) -> float | None:
        return self.record.metric(group, name)


# =============================================================================================
# Finding runs
# =============================================================================================
def find_runs(runs_dir: Path, labels: dict[str, str]) -> list[Run]:
    """Every run_* with a final_info.json under `runs_dir` (and the baseline run_0 one folder up
    when `runs_dir` has none), in run order, with their labels and colours."""
    runs_dir = Path(runs_dir)
    found = {path.parent.name: path.parent for path in runs_dir.glob("run_*/final_info.json")}
    baseline = baseline_run_dir(runs_dir)
    if BASELINE_RUN not in found and baseline is not None and (baseline / FINAL_INFO).is_file():
        print(f"{BASELINE_RUN}: the baseline, from {baseline}")
        found[BASELINE_RUN] = baseline
    for name in labels:
        if name not in found:
            print(f"{name} ('{labels[name]}' in labels): no {name}/final_info.json in {runs_dir}; not shown")
    names = sorted(found, key=lambda n: (run_number(n) is None, run_number(n) or 0, n))
    colors = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors
    records = [load_run(found[name]) for name in names]
    overrides = [overridden_values(record) for record in records]
    runs = []
    for i, (record, values) in enumerate(zip(records, overrides)):
        # the overridden values that differ between the runs of this variant tell them apart
        same_variant = [other for r, other in zip(records, overrides) if r.variant == record.variant]
        telling = [f"{key} {value}" for key, value in values.items()
                   if len({str(other.get(key)) for other in same_variant}) > 1]
        runs.append(Run(record, run_label(record, labels, telling),
                        matplotlib.colors.to_hex(colors[i % len(colors)])))
    return runs


def overridden_values(record: RunRecord) -> dict[str, str]:
    """The Config values a script's overrides set for the run (config.json's
    changed_from_experiment_py lines 'lr 0.001 -> 0.0003 (overrides)')."""
    lines = (record.config or {}).get("changed_from_experiment_py", [])
    return {line.split()[0]: line.split(" -> ")[1].removesuffix(" (overrides)")
            for line in lines if line.endswith(" (overrides)") and " -> " in line}


def run_label(record: RunRecord, labels: dict[str, str], telling: list[str] = ()) -> str:
    """The run's entry in `labels`, else its variant's title (config.json) followed by the
    overridden values that tell it from the other runs of its variant (e.g. '[lr 0.0003, seed
    1]'), else 'run_i (variant)'."""
    title = (record.config or {}).get("variant_title")
    if title and telling:
        title = f"{title} [{', '.join(telling)}]"
    return labels.get(record.name) or title or f"{record.name} ({record.variant})"


def _finite(values) -> np.ndarray:
    """Floats, with NaN for anything absent, non-numeric or infinite."""
    numbers = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan
               for v in values]
    array = np.array(numbers, dtype=float)
    array[~np.isfinite(array)] = np.nan
    return array


def _wrap(text: str, width: int = 16) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)) or text


def _title(fig, title: str, runs: list[Run]) -> None:
    """The figure's title, with the key to the degenerate marks when a drawn run is degenerate."""
    note = f"\n{DEGENERATE_NOTE}" if any(r.record.degenerate for r in runs) else ""
    fig.suptitle(title + note)


def _save(fig, out_dir: Path, name: str) -> Path:
    path = out_dir / name
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


# =============================================================================================
# (a) sparse probing
# =============================================================================================
def plot_sparse_probing(runs: list[Run], out_dir: Path, skipped: list[str]) -> Path | None:
    has = [r for r in runs if "sparse_probing" in r.record.means]
    skipped += [f"{r.name}: no sparse_probing results" for r in runs if r not in has]
    if not has:
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5))
    xs = list(K_VALUES) + [ALL_LATENTS_X]

    def curve(run: Run, who: str) -> np.ndarray:
        return _finite([run.metric("sparse_probing", f"{who}_top_{k}_test_accuracy") for k in K_VALUES]
                       + [run.metric("sparse_probing", f"{who}_test_accuracy")])

    # runs on the same model and data share one LLM curve: draw each distinct curve once
    llm_groups: list[tuple[np.ndarray, list[Run]]] = []
    for run in has:
        values = curve(run, "llm")
        if not np.isfinite(values).any():
            continue
        for group_values, members in llm_groups:
            if np.allclose(values, group_values, atol=1e-4, equal_nan=True):
                members.append(run)
                break
        else:
            llm_groups.append((values, [run]))
    greys = ["black", "dimgrey", "darkgrey", "silver"]
    for i, (values, members) in enumerate(llm_groups):
        model = members[0].record.model_name
        label = "LLM residual stream" + (f", {model}" if model else "") + \
            ("" if len(llm_groups) == 1 and len(members) == len(has) else f" ({', '.join(r.name for r in members)})")
        ax.plot(xs, values, color=greys[i % len(greys)], lw=2.2, ls=":", marker="s", ms=6, label=label)
    for run in has:
        values = curve(run, "sae")
        if not np.isfinite(values).any():
            skipped.append(f"{run.name}: sparse_probing has no SAE accuracies")
            continue
        hollow = run.record.degenerate
        ax.plot(xs, values, color=run.color, lw=2, ls="--" if hollow else "-", marker="o", ms=7,
                mfc="white" if hollow else run.color, label=f"SAE: {run.legend}")
    if not ax.lines:
        plt.close(fig)
        return None
    ax.axhline(0.5, color="grey", lw=1, ls="-.", label="chance (0.5)")
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(k) for k in K_VALUES] + ["all"])
    ax.minorticks_off()
    ax.set_xlabel("k: latents (SAE) or residual dimensions (LLM) the probe may use")
    ax.set_ylabel("test accuracy (fraction correct,\nmean over binary tasks)")
    lowest = np.nanmin([line.get_ydata() for line in ax.lines if len(line.get_ydata()) == len(xs)])
    ax.set_ylim(min(0.45, lowest - 0.02), 1.0)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(fig, "Sparse probing (SAE-Bench): top-k probe accuracy", has)
    return _save(fig, out_dir, "sparse_probing.png")


# =============================================================================================
# Bar charts: (b) absorption, (d) hierarchy
# =============================================================================================
def _bars(ax, runs: list[Run], values: list[float | None], errors: list[float | None] | None = None,
          offset: float = 0.0, height: float = 0.7, light: bool = False, say_no_data: bool = True) -> None:
    """One horizontal bar per run (hatched if degenerate); 'no data' where the run lacks the value."""
    for i, (run, value) in enumerate(zip(runs, values)):
        y = i + offset
        if value is None:
            if say_no_data:
                ax.text(0, i, "  no data", ha="left", va="center", fontsize=9, color="grey")
            continue
        hatch = DEGENERATE_HATCH if run.record.degenerate else ("..." if light else None)
        error = errors[i] if errors else None
        ax.barh(y, value, height, color=run.color, alpha=0.35 if light else 0.9, hatch=hatch,
                edgecolor="black", linewidth=0.6, xerr=error, capsize=4 if error else 0)


def _run_axes(axes, runs: list[Run]) -> None:
    """Runs down the y axis (first run on top), labelled on the leftmost panel."""
    for ax in axes:
        ax.set_yticks(range(len(runs)), [_wrap(r.legend, 24) for r in runs])
        ax.set_ylim(len(runs) - 0.5, -0.5)
        ax.set_xlim(left=0)
        ax.grid(axis="y", visible=False)
    for ax in axes[1:]:
        ax.tick_params(labelleft=False)


def plot_absorption(runs: list[Run], out_dir: Path, skipped: list[str]) -> Path | None:
    has = [r for r in runs if "absorption" in r.record.means]
    skipped += [f"{r.name}: no absorption results" for r in runs if r not in has]
    if not has:
        return None
    panels = [
        ("mean_absorption_fraction_score", "std_dev_absorption_fraction_score",
         "Mean absorption fraction", "absorption fraction (0-1, lower is better)"),
        ("mean_full_absorption_score", "std_dev_full_absorption_score",
         "Full absorption", "full-absorption rate (0-1, lower is better)"),
        ("mean_num_split_features", "std_dev_num_split_features",
         "Feature splitting", "split features per letter (count)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(20, 1.8 + 0.75 * len(runs)))
    for ax, (mean, std, title, xlabel) in zip(axes, panels):
        _bars(ax, runs, [r.metric("absorption", mean) for r in runs],
              [r.metric("absorption", std) for r in runs])
        ax.set_title(title)
        ax.set_xlabel(xlabel)
    # by level: both levels (solid, 95% interval over letters), the base level alone and the
    # concept level alone (light, thin): where a hierarchical SAE's absorption lives
    ax = axes[3]
    both = [r.metric("absorption", "mean_absorption_fraction_score") for r in runs]
    low = [r.metric("absorption", "mean_absorption_fraction_ci95_low") for r in runs]
    high = [r.metric("absorption", "mean_absorption_fraction_ci95_high") for r in runs]
    interval = [None if None in (b, lo, hi) else [[b - lo], [hi - b]] for b, lo, hi in zip(both, low, high)]
    _bars(ax, runs, both, height=0.3, offset=-0.3)
    for i, error in enumerate(interval):
        if error is not None:
            ax.errorbar(both[i], i - 0.3, xerr=error, color="black", capsize=3, lw=1)
    for offset, key, label in ((0.0, "base_only", "base"), (0.3, "concept_only", "concept")):
        values = [r.metric("absorption", f"{key}_mean_absorption_fraction_score") for r in runs]
        _bars(ax, runs, values, offset=offset, height=0.3, light=True, say_no_data=False)
        for i, value in enumerate(values):
            if value is not None:
                ax.text(value, i + offset, f" {label} only", va="center", fontsize=7)
    ax.set_title("By level (top bar: both, 95% CI over letters)")
    ax.set_xlabel("absorption fraction (0-1, lower is better)")
    _run_axes(axes, runs)
    _title(fig, "Feature absorption (SAE-Bench, first-letter task; error bars: std over letters)", has)
    fig.tight_layout()
    return _save(fig, out_dir, "absorption.png")


HIERARCHY_PANELS = [  # (metric; its null is null_<metric>, title, axis label)
    ("mi_mean", "Mutual information I(c; b)", "MI per (concept, base)\npair (bits)"),
    ("nmi_mean", "Normalised MI", "NMI (0-1)"),
    ("h_b_given_c_mean", "Conditional entropy H(b | c)", "H(b | c) (bits)"),
    ("p_b_given_c_mean", "P(b fires | c fires)", "probability (0-1)"),
    ("leakage_mean", "Leakage", "concept firings with no base\nlatent firing (fraction)"),
]


def plot_hierarchy(runs: list[Run], out_dir: Path, skipped: list[str]) -> Path | None:
    has = [r for r in runs if "hierarchy" in r.record.means]
    skipped += [f"{r.name}: no hierarchy results" for r in runs if r not in has]
    if not has:
        return None
    fig, axes = plt.subplots(1, len(HIERARCHY_PANELS), figsize=(20, 2.6 + 0.9 * len(runs)))
    for ax, (metric, title, xlabel) in zip(axes, HIERARCHY_PANELS):
        _bars(ax, runs, [r.metric("hierarchy", metric) for r in runs], offset=-0.2, height=0.38)
        _bars(ax, runs, [r.metric("hierarchy", f"null_{metric}") for r in runs], offset=0.2,
              height=0.38, light=True, say_no_data=False)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
    _run_axes(axes, runs)
    fig.legend(handles=[Patch(facecolor="grey", edgecolor="black", label="upper bar: a concept's top-|W_enc2| base latents"),
                        Patch(facecolor="grey", alpha=0.35, hatch="...", edgecolor="black",
                              label="lower bar: null, random base latents")],
               loc="lower center", ncol=2, bbox_to_anchor=(0.5, 0.0))
    alive = ", ".join(f"{r.name}: {r.metric('hierarchy', 'alive_concepts'):.0f}" for r in has
                      if r.metric("hierarchy", "alive_concepts") is not None)
    _title(fig, "Hierarchy consistency on held-out tokens, mean over alive concepts"
           + (f" (alive concepts {alive})" if alive else ""), has)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, out_dir, "hierarchy.png")


# =============================================================================================
# (c) L0 per level vs explained variance
# =============================================================================================
LEVEL_MARKERS = {"base": "o", "concept": "^", "total": "s"}


def plot_l0_vs_ev(runs: list[Run], out_dir: Path, skipped: list[str]) -> Path | None:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    drawn = []
    for run in runs:
        ev = run.metric("training", "explained_variance")
        levels = {level: run.metric("training", f"l0_{level}") for level in LEVEL_MARKERS}
        if ev is None or all(v is None for v in levels.values()):  # fall back to SAE-Bench core
            ev, levels = run.metric("core", "explained_variance_centered"), {"total": run.metric("core", "l0")}
        if not run.record.has_concept_level:  # a vanilla SAE: its base L0 is its total L0
            levels = {"base": levels["base"]} if levels.get("base") is not None else {"total": levels["total"]}
        levels = {k: v for k, v in levels.items() if v is not None}
        if ev is None or not levels:
            skipped.append(f"{run.name}: no explained variance and L0")
            continue
        xs = [levels[k] for k in LEVEL_MARKERS if k in levels]
        ax.plot(xs, [ev] * len(xs), color=run.color, lw=1, alpha=0.5)
        for level, l0 in levels.items():
            ax.scatter(l0, ev, s=90, marker=LEVEL_MARKERS[level], color=run.color, zorder=3,
                       facecolors="white" if run.record.degenerate else run.color, linewidths=1.8)
        drawn.append(run)
    if not drawn:
        plt.close(fig)
        return None
    smallest = min(min(o.get_offsets()[:, 0]) for o in ax.collections)
    if smallest >= 1:
        ax.set_xscale("log")
        ax.set_xlabel("L0 (active latents per token; log axis)")
    else:  # an L0 of 0 cannot sit on a log axis
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_xlabel("L0 (active latents per token; symlog axis, linear below 1)")
    ax.set_ylabel("explained variance (fraction,\nheld-out tokens; else SAE-Bench core)")
    handles = [Line2D([], [], color=r.color, marker="o", lw=0, ms=9,
                      mfc="white" if r.record.degenerate else r.color, label=r.legend) for r in drawn]
    handles += [Line2D([], [], color="black", marker=m, lw=0, ms=9,
                       label=f"L0 of the {level} level" if level != "total" else "L0 of both levels")
                for level, m in LEVEL_MARKERS.items()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.axhline(0, color="grey", lw=1, ls="-.")
    ax.text(ax.get_xlim()[1], 0, "EV = 0: no better than the mean ", ha="right", va="bottom",
            fontsize=9, color="grey")
    _title(fig, "Sparsity per level vs reconstruction (one explained variance per SAE)", drawn)
    return _save(fig, out_dir, "l0_vs_ev.png")


# =============================================================================================
# (e) weight histograms
# =============================================================================================
LEVELS = ("base", "concept")
QUANTITY_LABELS = {  # quantity: (axis label with unit, what the histogram counts)
    "decoder_row_norm": ("decoder row L2 norm", "fraction of latents"),
    "encoder_column_norm": ("encoder column L2 norm", "fraction of latents"),
    "w_enc2/abs_log10_histogram": ("log10 |W_enc2 entry| (nonzero entries)", "fraction of entries"),
    "w_enc2/effective_base_per_concept": ("effective base latents per concept\n"
                                          "(participation ratio of its |W_enc2| column)",
                                          "fraction of concepts"),
    "w_enc2/entries_above_1pct_of_max": ("W_enc2 entries above 1% of the concept's\n"
                                         "largest (count per concept)", "fraction of concepts"),
}
"""Labels for the histograms of sae_harness/evals/weights.py; other histograms get their key."""
W_ENC2_HISTOGRAMS = ("abs_log10_histogram", "effective_base_per_concept", "entries_above_1pct_of_max")


def weight_histograms(weights: WeightsOutput) -> dict[tuple[str, str], dict]:
    """{(quantity, level): {"edges", "counts"}} from weights.json (its schema, by field name)."""
    found = {}
    for level, norms in weights.levels.items():
        for quantity in ("encoder_column_norm", "decoder_row_norm"):
            histogram = getattr(norms, quantity).histogram
            found[(quantity, level)] = {"edges": histogram.bin_edges, "counts": histogram.counts}
    if weights.w_enc2 is not None:
        for quantity in W_ENC2_HISTOGRAMS:
            node = getattr(weights.w_enc2, quantity)
            histogram = getattr(node, "histogram", node)
            found[(f"w_enc2/{quantity}", "concept")] = {"edges": histogram.bin_edges,
                                                        "counts": histogram.counts}
    return found


def _constant(hist: dict, relative: float = 1e-4) -> bool:
    """True when a histogram's whole range is negligible (a quantity fixed by a constraint)."""
    edges = _finite(hist["edges"])
    return len(edges) > 1 and (edges[-1] - edges[0]) <= relative * max(1.0, abs(edges[0]))


def plot_weights(runs: list[Run], out_dir: Path, skipped: list[str]) -> Path | None:
    per_run = {}
    for run in runs:
        data = run.record.eval_results.get("weights")
        if data is None:
            skipped.append(f"{run.name}: no weight histograms (weights.json)")
            continue
        try:
            per_run[run.name] = weight_histograms(WeightsOutput.model_validate(data))
        except ValidationError as error:
            skipped.append(f"{run.name}: weights.json does not fit its schema "
                           f"({error.error_count()} problems, first: {error.errors()[0]['loc']})")
    if not per_run:
        return None
    known = list(QUANTITY_LABELS)
    level_order = {lv: i for i, lv in enumerate(LEVELS + ("all",))}
    panels = sorted({key for hists in per_run.values() for key in hists},
                    key=lambda k: (known.index(k[0]) if k[0] in known else len(known), k[0],
                                   level_order[k[1]]))
    constant = [key for key in panels if all(_constant(hists[key]) for hists in per_run.values()
                                             if key in hists)]
    for quantity, level in constant:  # e.g. decoder norms held at 1 by the unit-norm constraint
        value = _finite(per_run[next(n for n in per_run if (quantity, level) in per_run[n])]
                        [(quantity, level)]["edges"])[0]
        skipped.append(f"every run: {quantity} ({level} level) is the constant {value:.6g}; no panel")
    panels = [key for key in panels if key not in constant]
    columns = 2
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, figsize=(13, 3.9 * rows))
    for ax, (quantity, level) in zip(axes.flat, panels):
        xlabel, counted = QUANTITY_LABELS.get(quantity, (quantity.replace("_", " "), "fraction of the total count"))
        for run in runs:
            hist = per_run.get(run.name, {}).get((quantity, level))
            if not hist:
                continue
            edges, counts = _finite(hist["edges"]), _finite(hist["counts"])
            if len(edges) != len(counts) + 1 or not np.nansum(counts):
                skipped.append(f"{run.name}: histogram {quantity}/{level} malformed")
                continue
            ax.stairs(counts / np.nansum(counts), edges, color=run.color, lw=2,
                      ls="--" if run.record.degenerate else "-", label=run.legend)
        title = xlabel.split("\n")[0]
        ax.set_title(f"{title}, {level} level" if level != "all" else title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(counted)
        ax.ticklabel_format(axis="x", useOffset=False)
        if ax.patches:
            ax.legend(loc="upper right")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    _title(fig, "Weight distributions per level (weights.json)", [r for r in runs if r.name in per_run])
    fig.tight_layout()
    return _save(fig, out_dir, "weights.png")


# =============================================================================================
# (f) training curves
# =============================================================================================
TRAINING_PANELS = [  # (title, y label, [(log key, line style)], y scale)
    ("Total loss", "loss (scale-free units, see Config)", [("total", "-")], "log"),
    ("Reconstruction", "||x - x_hat||^2 / (d s^2)\n(fraction of variance unexplained)",
     [("reconstruction", "-")], "log"),
    ("Activation L1 (before its lambda)", "|z|_1 / (sqrt(d) s) per token",
     [("l1_base", "-"), ("l1_concept", "--")], "log"),
    ("Weight L1 (before its lambda)", "mean column |W|_1 / sqrt(fan-in)",
     [("weight_l1_base", "-"), ("weight_l1_concept", "--")], "log"),
    ("L0 per level", "active latents per token", [("l0_base", "-"), ("l0_concept", "--")], "symlog"),
    ("Dead latents", "fraction of the level", [("dead_fraction_base", "-"), ("dead_fraction_concept", "--")], "linear"),
    ("Concept-weight penalty's coefficient coef(t) (the idea's lw2)", "coef(t)", [("weight_l1_concept_coef", "-")], "linear"),
    ("Learning rate", "learning rate", [("lr", "-")], "log"),
    ("Concept-level terms (before their coefficients)", "loss (scale-free units)",
     [("concept_reconstruction", "-"), ("auxk", "--")], "log"),
    ("Concept pre-activations z1 W_enc2 + b_enc2", "batch mean (-) and max (--), scaled units",
     [("concept_pre_mean", "-"), ("concept_pre_max", "--")], "symlog"),
    ("Concept latents firing in a batch", "distinct latents", [("concept_latents_in_batch", "-")], "linear"),
]


CONCEPT_ONLY = {"l1_concept", "weight_l1_concept", "l0_concept", "dead_fraction_concept", "weight_l1_concept_coef",
                "concept_reconstruction", "auxk", "concept_penalty_factor"}
"""Log keys that mean nothing for a vanilla SAE (no concept level): not drawn for it."""
NOT_PLOTTED = {"step", "tokens", "seconds", "concept_penalty_factor", "concept_pre_positive_fraction",
               "concept_bias_mean"}
"""Logged but not drawn on their own (the diagnostics figure shows the grad shares)."""
PANEL_COLUMNS = 4


def training_panels(logs: dict[str, list[dict]]) -> list[tuple]:
    """The panels for what the logs hold: the known ones (TRAINING_PANELS) that have data, then
    one panel per other logged number (an added loss term or diagnostic gets its own)."""
    present = {key for rows in logs.values() for row in rows for key, value in row.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
               and not key.startswith("grad_share_")}
    panels = [panel for panel in TRAINING_PANELS if any(key in present for key, _ in panel[2])]
    known = {key for panel in TRAINING_PANELS for key, _ in panel[2]} | NOT_PLOTTED
    panels += [(key.replace("_", " "), key, [(key, "-")], "linear") for key in sorted(present - known)]
    return panels


def plot_training(runs: list[Run], out_dir: Path, skipped: list[str]) -> Path | None:
    logs = {}
    for run in runs:
        path = run.record.path / "training_log.jsonl"
        rows = read_training_log(path, skip_unreadable=True) if path.is_file() else []
        if rows:
            logs[run.name] = rows
        else:
            skipped.append(f"{run.name}: no training log (training_log.jsonl)")
    if not logs:
        return None
    panels = training_panels(logs)
    columns = min(PANEL_COLUMNS, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, figsize=(5 * columns, 4.3 * rows + 0.6))
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, ylabel, series, scale) in zip(axes.flat, panels):
        for run in runs:
            rows = logs.get(run.name)
            if not rows:
                continue
            tokens = _finite([row.get("tokens", row.get("step")) for row in rows])
            for key, style in series:
                values = _finite([row.get(key) for row in rows])
                if not np.isfinite(values).any() or (key in CONCEPT_ONLY and not run.record.has_concept_level):
                    continue
                ax.plot(tokens, values, color=run.color, ls=style, lw=1.8)
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=1)
        elif scale == "log":
            ax.set_yscale("log", nonpositive="mask")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("training tokens")
        ax.xaxis.set_major_formatter(EngFormatter())
    handles = [Line2D([], [], color=r.color, lw=2.5, label=r.legend) for r in runs if r.name in logs]
    handles += [Line2D([], [], color="black", ls="-", label="base level (or the only series)"),
                Line2D([], [], color="black", ls="--", label="concept level")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 5), bbox_to_anchor=(0.5, 0.0))
    _title(fig, "Training curves (training_log.jsonl; log axes leave out zeros; L0 axis linear below 1)",
           [r for r in runs if r.name in logs])
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, out_dir, "training.png")


# =============================================================================================
# (g) what decides the concept level's fate: early steps and the whole run
# =============================================================================================
DIAGNOSTIC_ROWS = [  # (title, y label, keys or a prefix, y scale)
    ("Which loss term moves the concept encoder", "share of the gradient on\n(W_enc2, b_enc2)",
     "grad_share_", "symlog"),
    ("Concept pre-activations", "batch max (--) and mean (-)", ["concept_pre_max", "concept_pre_mean"], "symlog"),
    ("Concept level alive", "L0 concept (-), latents firing in\nthe batch / 10 (--)",
     ["l0_concept", "concept_latents_in_batch"], "linear"),
]
EARLY_STEPS = 100


def plot_concept_diagnostics(runs: list[Run], out_dir: Path, skipped: list[str]) -> Path | None:
    logs = {}
    for run in runs:
        path = run.record.path / "training_log.jsonl"
        rows = read_training_log(path, skip_unreadable=True) if path.is_file() and run.record.has_concept_level else []
        if any("concept_pre_mean" in row for row in rows):
            logs[run.name] = rows
        elif run.record.has_concept_level:
            skipped.append(f"{run.name}: no concept diagnostics in training_log.jsonl")
    if not logs:
        return None
    shown = [r for r in runs if r.name in logs]
    fig, axes = plt.subplots(len(DIAGNOSTIC_ROWS), 2, figsize=(15, 3.8 * len(DIAGNOSTIC_ROWS)),
                             squeeze=False)
    styles = ["-", "--", ":", "-."]
    for row, (title, ylabel, keys, scale) in enumerate(DIAGNOSTIC_ROWS):
        for column, early in enumerate((True, False)):
            ax = axes[row, column]
            for run in shown:
                rows = [r for r in logs[run.name] if not early or r.get("step", 0) <= EARLY_STEPS]
                names = (sorted({k for r in rows for k in r if k.startswith(keys)})
                         if isinstance(keys, str) else keys)
                steps = _finite([r.get("step") for r in rows])
                for i, key in enumerate(names):
                    values = _finite([r.get(key) for r in rows])
                    if key == "concept_latents_in_batch":
                        values = values / 10
                    if np.isfinite(values).any():
                        label = key.removeprefix("grad_share_") if isinstance(keys, str) else None
                        ax.plot(steps, values, color=run.color, ls=styles[i % len(styles)], lw=1.6,
                                label=label if run is shown[0] else None)
            if scale == "symlog":
                ax.set_yscale("symlog", linthresh=1e-3 if "pre" in title else 1e-2)
            ax.set_title(f"{title} ({'first ' + str(EARLY_STEPS) + ' steps' if early else 'whole run'})")
            ax.set_ylabel(ylabel)
            ax.set_xlabel("training step")
            if isinstance(keys, str) and ax.lines:
                ax.legend(loc="best", fontsize=8, title=f"term ({shown[0].name})")
    handles = [Line2D([], [], color=r.color, lw=2.5, label=r.legend) for r in shown]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), bbox_to_anchor=(0.5, 0.0))
    _title(fig, "Concept-level diagnostics (training_log.jsonl): shares sum to 1 per step; "
                "a pre-activation max below 0 leaves TopK nothing to fire", shown)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, out_dir, "concept_diagnostics.png")


# (h) the baseline frontier: metric against L0
FRONTIER_PANELS = [("explained_variance", "explained variance (held-out)"),
                   ("ce_loss_score", "CE-loss score (core)"),
                   ("absorption_fraction", "absorption fraction (lower is better)"),
                   ("sae_top_1", "SAE top-1 probe accuracy"), ("sae_top_5", "SAE top-5 probe accuracy")]
FAMILY_STYLE = {"relu": ("ReLU+L1 baseline (ours)", "o-"), "topk": ("TopK (SAE-Lens)", "s-"),
                "matryoshka": ("Matryoshka BatchTopK (SAE-Lens)", "^-")}


def plot_frontier(runs: list[Run], out_dir: Path, skipped: list[str]) -> Path | None:
    from pydantic import ValidationError

    from sae_harness.records.schemas import FrontierOutput, read_validated
    from sae_harness.records.frontier import frontier_path, headline_values

    path = frontier_path(runs[-1].record.path)  # the baseline's frontier, wherever the runs live
    if not path.exists():
        skipped.append(f"every run: no {path} (python scripts/build_frontier.py)")
        return None
    try:
        frontier = read_validated(FrontierOutput, path)
    except ValidationError as error:
        skipped.append(f"every run: {path} does not fit its schema ({error.error_count()} errors)")
        return None
    families: dict[str, list] = {}
    for point in frontier.points:
        families.setdefault(point.family, []).append(point)
    spread = frontier.seed_spread.families
    fig, axes = plt.subplots(1, len(FRONTIER_PANELS), figsize=(4.3 * len(FRONTIER_PANELS), 4.4))
    for ax, (metric, title) in zip(axes, FRONTIER_PANELS):
        for family, points in sorted(families.items()):
            curve = sorted((p.l0_total, p.metrics[metric]) for p in points if metric in p.metrics)
            if curve:
                label, style = FAMILY_STYLE.get(family, (family, "x-"))
                ax.plot(*zip(*curve), style, color="0.45" if family == "relu" else None, ms=4,
                        lw=1.2, alpha=0.8, label=label)
        for run in runs:
            info = {g: {"means": means} for g, means in run.record.means.items()}
            value, l0 = headline_values(info).get(metric), run.metric("training", "l0_total")
            if value is None or l0 is None:
                continue
            stats = spread.get(run.record.variant, {}).get(metric)
            err = None if stats is None else stats.std
            ax.errorbar([l0], [value], yerr=None if err is None else [2 * err], fmt="D",
                        color=run.color, mfc="none" if run.record.degenerate else run.color,
                        ms=7, capsize=3, label=run.legend)
        ax.set_xscale("log")
        ax.set_xlabel("total L0 (held-out)")
        ax.set_title(title)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8.5, bbox_to_anchor=(0.5, -0.02))
    _title(fig, "Each run against the baseline frontier at equal L0 (error bars: 2 x seed std; "
                f"{frontier.machine})", runs)
    fig.tight_layout(rect=(0, 0.12, 1, 0.94))
    return _save(fig, out_dir, "frontier.png")


def concept_pages(runs: list[Run], out_dir: Path) -> str:
    """Links to the runs' concept browsers (run_i/concepts.html, concept_page.py), written to
    `out_dir/concept_pages.md` (links relative to it) and returned for stdout (file:// URLs,
    which a browser opens from disk); '' when no run has a page."""
    pages = [(run, run.record.path / "concepts.html") for run in runs]
    pages = [(run, page.resolve()) for run, page in pages if page.is_file()]
    if not pages:
        return ""
    lines = ["Concept browsers (open in a web browser; no server needed):", ""]
    for run, page in pages:
        relative = Path(os.path.relpath(page, Path(out_dir).resolve())).as_posix()
        lines.append(f"- [{run.name}: {run.label}]({relative})")
    (Path(out_dir) / "concept_pages.md").write_text("\n".join(lines) + "\n")
    return "\n".join(["Concept browsers (open in a web browser; no server needed):"]
                     + [f"  {run.name}: {page.as_uri()}" for run, page in pages])


# =============================================================================================
# Main
# =============================================================================================
FIGURES = [plot_sparse_probing, plot_absorption, plot_l0_vs_ev, plot_hierarchy, plot_weights, plot_training,
           plot_concept_diagnostics, plot_frontier]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="plots", help="folder for the PNG figures (default plots/)")
    parser.add_argument("--runs_dir", default=".", help="folder holding the run_* directories (default .)")
    args = parser.parse_args(argv)
    runs = find_runs(Path(args.runs_dir), labels)
    if not runs:
        print(f"error: no run to plot: no run_*/final_info.json in {args.runs_dir}", file=sys.stderr)
        return 1
    for run in runs:
        if run.record.missing:
            print(f"{run.name} lacks: " + "; ".join(run.record.missing))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for draw in FIGURES:
        skipped: list[str] = []
        name = draw.__name__.removeprefix("plot_")
        try:
            path = draw(runs, out_dir, skipped)
        except Exception as error:  # one figure's trouble must not cost the others
            plt.close("all")
            print(f"{name}: figure not drawn: {type(error).__name__}: {error}")
            continue
        for line in skipped:
            print(f"{name}: left out {line}")
        print(f"{name}: wrote {path}" if path else f"{name}: no run has the data; no figure")
    print()
    print(markdown_table([(run.record, run.label) for run in runs]))
    links = concept_pages(runs, out_dir)
    if links:
        print()
        print(links)
    return 0


if __name__ == "__main__":
    sys.exit(main())

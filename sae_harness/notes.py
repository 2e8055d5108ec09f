"""The lab notebook notes.txt, in the AI-Scientist form, and the run directory as its readers see it.

    # Title: ...
    # Experiment description: ...

    ## Run 1: Previous cosine variant [cosine_sparsity]
    Results: {"variant": "cosine_sparsity", "steps": 488, "explained_variance": 0.912, ...}
    Description: Variant cosine_sparsity ... Changes from run 0: concept_k 0 -> 12; ...
    Against the baseline: run minus the baseline frontier at L0 60.1 ('~' within seed noise): ...
    WARNING: degenerate SAE: ...            (only when degeneracy_reasons finds something)
    Failed evaluations: absorption: ...     (only when run_status.json records failures)
    Warnings: ...                           (only when run_status.json records warnings)

A run's section is its `## Run <id>:` header line and the non-blank lines right under it; a
blank line (or a line starting with '#') ends it. `update_notes` writes a run's section, or
replaces it when the run was noted before, and leaves every other byte of the file as it was:
text the researcher adds after a blank line, the title block, other runs' sections.
Sections are kept in run order (run_3 is run 3); a run folder without a number (run_local)
is noted under its name, after the numbered runs.

Runs are read by run_directory.load_run, as plot.py reads them.

    python -m sae_harness.notes run_0 run_1 ...   (re)writes those runs' sections of notes.txt
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from sae_harness.degeneracy import LEGACY_TEMPLATE_KEYS
from sae_harness.frontier import vs_baseline_summary
from sae_harness.run_directory import NOTEBOOK, RunRecord, atomic_write_text, load_run, run_number

HEADLINE_METRICS: list[tuple[str, str, str]] = [
    # (name in notes' Results and plot's table, group, metric in that group's means)
    ("steps", "training", "steps"),
    ("tokens", "training", "tokens"),
    ("explained_variance", "training", "explained_variance"),
    # SAE-Bench 0.6.0's own `explained_variance` divides by an uncentred moment (see
    # evals/core.py); the centred figure on the same tokens is the comparable one
    ("core_explained_variance", "core", "explained_variance_centered"),
    ("l0_base", "training", "l0_base"),
    ("l0_concept", "training", "l0_concept"),
    ("core_l0", "core", "l0"),
    ("dead_fraction_base", "training", "dead_fraction_base"),
    ("dead_fraction_concept", "training", "dead_fraction_concept"),
    ("ce_loss_score", "core", "ce_loss_score"),
    ("sae_top_1_test_accuracy", "sparse_probing", "sae_top_1_test_accuracy"),
    ("sae_top_5_test_accuracy", "sparse_probing", "sae_top_5_test_accuracy"),
    ("sae_test_accuracy", "sparse_probing", "sae_test_accuracy"),
    ("llm_top_1_test_accuracy", "sparse_probing", "llm_top_1_test_accuracy"),
    ("mean_absorption_fraction_score", "absorption", "mean_absorption_fraction_score"),
    ("mean_full_absorption_score", "absorption", "mean_full_absorption_score"),
    ("alive_concepts", "hierarchy", "alive_concepts"),
    ("mi_mean", "hierarchy", "mi_mean"),
    ("null_mi_mean", "hierarchy", "null_mi_mean"),
    ("nmi_mean", "hierarchy", "nmi_mean"),
    ("null_nmi_mean", "hierarchy", "null_nmi_mean"),
]

DEFAULT_HEADER = (
    "# Title: A two-level hierarchical sparse autoencoder with a cosine-annealed concept-sparsity "
    "penalty\n"
    "# Experiment description: We train a two-level hierarchical sparse autoencoder on a language "
    "model's residual stream (Gemma-2-2B layer 12, or Gemma-3-270M layer 6 offline): a ReLU base "
    "level with n1 latents and a TopK concept level with n1/4 latents that reads the base latents; "
    "both decode into the reconstruction. An L1 penalty on the concept-to-base weights W_enc2 rises "
    "along a cosine ramp so that each concept comes to use few base latents, and the learning rate "
    "follows a warm-up and a cosine schedule with warm restarts. We compare a vanilla ReLU SAE "
    "baseline, the previous cosine-sparsity variant and the tuned variant on SAE-Bench sparse "
    "probing, feature absorption and core metrics, on weight distributions, and on a new "
    "hierarchy-consistency analysis: the mutual information between each concept's firing and its "
    "strongest base latents' firing, against random base latents as a null.\n"
    "# Departures (README, 'The hierarchy lives'): as written, the concept level dies in the first "
    "steps; the tuned_cosine and cosine_sparsity variants add the smallest set of aids that keeps "
    "it alive and spread (no L1 on the TopK activations, AuxK for dead concepts, load-balanced "
    "TopK selection) and train at lr 1e-3; the *_as_written variants are the idea exactly (AdamW, "
    "lr 3e-4), and every run is read against a baseline frontier at equal L0 (vs_baseline).\n"
    "\n"
)

_SECTION_HEADER = re.compile(r"^## Run (?P<key>[^:\s]+):")
_IGNORED_CONFIG_KEYS = {"provenance", "preset_reason", "cache_dir"}


def headline_metrics(record: RunRecord) -> dict[str, float]:
    """The key numbers of a run (HEADLINE_METRICS) that its final_info holds."""
    found = {}
    for name, group, metric in HEADLINE_METRICS:
        if name.endswith("_concept") and not record.has_concept_level:
            continue  # a vanilla SAE has no concept level to report on
        value = record.metric(group, metric)
        if value is not None:
            found[name] = value
    return found


# =============================================================================================
# A run's section
# =============================================================================================
def _round(value: float) -> float | int:
    """4 significant digits, but never fewer than the integer part (1536.4 stays 1536.4)."""
    if float(value).is_integer() and abs(value) < 1e15:
        return int(value)
    return round(value, 1) if abs(value) >= 1000 else float(f"{value:.4g}")


def _describe_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (str, list, dict)) or value is None else str(value)


def _flatten(config: dict) -> dict[str, Any]:
    """config.json's config and preset as one flat dict ('lr', 'preset.model_name', ...)."""
    flat = {"variant": config.get("variant")}
    flat.update(config.get("config") or {})
    for key, value in (config.get("preset") or {}).items():
        flat[f"preset.{key}"] = value
    return {k: v for k, v in flat.items() if k not in _IGNORED_CONFIG_KEYS}


def config_changes(previous: dict, current: dict) -> list[str]:
    """'name old -> new' for every configuration value that differs between two config.json."""
    before, after = _flatten(previous), _flatten(current)
    changes = []
    for key in list(after) + [k for k in before if k not in after]:
        old, new = before.get(key, "(absent)"), after.get(key, "(absent)")
        if old != new:
            changes.append(f"{key} {_describe_value(old)} -> {_describe_value(new)}")
    return changes


def _run_key(run_dir: Path) -> str:
    number = run_number(run_dir.name)
    return str(number) if number is not None else re.sub(r"[\s:]+", "_", run_dir.name)


def run_title(record: RunRecord) -> str:
    """'Tuned cosine (this idea) [tuned_cosine]'; a run folder without a number is titled by its name."""
    if record.legacy:
        name = "Seeded baseline" if record.number is not None else record.name
        return f"{name} [legacy AI-Scientist template result]"
    variant = record.variant
    title = (record.config or {}).get("variant_title") or variant  # experiment.py's VARIANT_TITLES
    name = title if record.number is not None else record.name
    return f"{name} [{variant}]"


def _description(record: RunRecord, previous_dir: Path | None) -> str:
    if record.legacy:
        template = ", ".join(f"{k} {_describe_value(record.final_info[k])}"
                             for k in sorted(LEGACY_TEMPLATE_KEYS) if k in record.final_info)
        parts = [f"Seeded result in the legacy AI-Scientist template format (a flat final_info.json "
                 f"not written by this harness; {template})"]
    else:
        parts = [f"Variant {record.variant}"]
    if record.config:
        preset = record.config.get("preset") or {}
        cfg = record.config.get("config") or {}
        where = f" on {preset.get('model_name', '?')} layer {preset.get('hook_layer', '?')} " \
                f"({preset.get('name', '?')} preset)" if preset else ""
        width = f", n1 = {cfg['d_sae_base']}" if "d_sae_base" in cfg else ""
        concepts = (f", concept level with k = {cfg['concept_k']}" if cfg.get("concept_k")
                    else ", no concept level" if "concept_k" in cfg else "")
        parts[0] += where + width + concepts
    if previous_dir is not None:
        previous = load_run(previous_dir)
        if previous.config is None or record.config is None:
            parts.append(f"No configuration to compare with {previous_dir.name} "
                         f"({'its' if previous.config is None else 'this run'} config.json is absent)")
        else:
            changes = config_changes(previous.config, record.config)
            parts.append(f"Changes from {previous_dir.name}: " + "; ".join(changes) if changes
                         else f"Same configuration as {previous_dir.name}")
    elif record.number:
        parts.append(f"No run_{record.number - 1} to compare the configuration with")
    state = record.status.get("state")
    if state and state != "finished":
        parts.append(f"Run state: {state}")
    if record.degeneracy.unchecked:
        parts.append("Not checked for degeneracy: " + "; ".join(record.degeneracy.unchecked))
    return ". ".join(parts) + "."


def notes_section(run_dir: Path) -> str:
    """The notes.txt section of one run (header, Results, Description, warnings), no blank line."""
    record = load_run(run_dir)
    key = _run_key(record.path)
    previous = None
    if record.number:
        candidate = record.path.parent / f"run_{record.number - 1}"
        previous = candidate if candidate.is_dir() else None
    results = {"variant": record.variant, **{k: _round(v) for k, v in headline_metrics(record).items()},
               "degenerate": record.degenerate}
    lines = [f"## Run {key}: {run_title(record)}",
             f"Results: {json.dumps(results)}",
             f"Description: {_description(record, previous)}"]
    vs_baseline = vs_baseline_summary(record.final_info)
    if vs_baseline:
        lines.append(f"Against the baseline: {vs_baseline}")
    if record.degenerate:
        lines.append("WARNING: degenerate SAE: " + "; ".join(record.degeneracy.reasons))
    if record.failures:
        lines.append("Failed evaluations: " + "; ".join(f"{group}: {reason}".replace("\n", " ")
                                                         for group, reason in record.failures.items()))
    if record.status.get("warnings"):
        lines.append("Warnings: " + "; ".join(str(w) for w in record.status["warnings"]))
    return "".join(line.replace("\n", " ").rstrip() + "\n" for line in lines)


# =============================================================================================
# The notebook file
# =============================================================================================
def _sections(lines: list[str]) -> list[tuple[str, int, int]]:
    """(run key, first line, end line) of each run section in the file's lines."""
    found, i = [], 0
    while i < len(lines):
        match = _SECTION_HEADER.match(lines[i])
        if not match:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() and not lines[end].startswith("#"):
            end += 1
        found.append((match.group("key"), i, end))
        i = end
    return found


def _comes_after(key: str, number: int | None) -> bool:
    """Whether a section with this key belongs after a new section of run `number`."""
    if number is None:
        return False  # named runs go at the end
    return not key.isdigit() or int(key) > number


def update_notes(notes_path: Path, run_dir: Path) -> str:
    """Write run_dir's section into notes.txt (replacing an earlier one); returns the section."""
    notes_path, run_dir = Path(notes_path), Path(run_dir)
    section = notes_section(run_dir)
    key, number = _run_key(run_dir), run_number(run_dir.name)
    text = notes_path.read_text() if notes_path.exists() else DEFAULT_HEADER
    lines = text.splitlines(keepends=True)
    sections = _sections(lines)
    new_lines = section.splitlines(keepends=True)
    same = [s for s in sections if s[0] == key]
    later = [s for s in sections if _comes_after(s[0], number)]
    if same:
        _, start, end = same[0]
        lines[start:end] = new_lines
    elif later:
        start = later[0][1]
        lines[start:start] = new_lines + ["\n"]
    else:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        if lines and lines[-1].strip():
            lines.append("\n")
        lines.extend(new_lines)
    atomic_write_text(notes_path, "".join(lines))
    return section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="(Re)write run sections of the lab notebook.")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories, e.g. run_0 run_1")
    parser.add_argument("--notes", type=Path, default=Path(NOTEBOOK), help="notebook file")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            parser.error(f"{run_dir} is not a run directory")
        print(update_notes(args.notes, run_dir), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The lab notebook notes.txt, in the AI-Scientist form, and the run directory as its readers see it.

    # Title: ...
    # Experiment description: ...
    # Notes: ...                            (DEFAULT_HEADER, written when the file is new)

    --- harness block run_1 begin (written by the harness; replaced when run_1 is run again; ...) ---
    Run 1: Previous cosine variant [cosine_sparsity]
    Results: {"variant": "cosine_sparsity", "steps": 488, "explained_variance": 0.912, ...}
    Description: Variant cosine_sparsity ... Changes from run_0: concept_k 0 -> 12; ...
    Against the baseline: run minus the baseline frontier at L0 60.1 ('~' within seed noise): ...
    WARNING: degenerate SAE: ...            (only when degeneracy_reasons finds something)
    Failed evaluations: absorption: ...     (only when run_status.json records failures)
    Warnings: ...                           (only when run_status.json records warnings)
    --- harness block run_1 end ---

The harness owns only its blocks: from a `--- harness block <run folder> begin` line to the next
`--- harness block <run folder> end ---` line of the same run (a begin line with no end before
the next begin line is not a block, and is left alone). `update_notes` replaces a run's block in
place when the file holds one, else appends it after the file's content; every byte outside
harness blocks stays as it was: the title block, and what the AI-Scientist coder writes about a
run (its own `## Run 1: ...` sections), before the run or after it.

Runs are read by run_directory.load_run, as plot.py reads them.

    python -m sae_harness.records.notes run_0 run_1 ...   (re)writes those runs' blocks in the notes.txt
                                                  beside each run (--notes names another file)
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from sae_harness.records.degeneracy import LEGACY_TEMPLATE_KEYS
from sae_harness.records.frontier import vs_baseline_summary
from sae_harness.records.run_directory import (NOTEBOOK, RunRecord, atomic_write_text, baseline_run_dir,
                                               load_run, run_number)

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
    "level with n_base latents and a TopK concept level with n_base/4 latents that reads the base latents; "
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
    "# Notes: each run's results are written by the harness between its '--- harness block run_i "
    "begin' and '--- harness block run_i end ---' lines, which are replaced when that run folder is "
    "run again; everything outside those blocks is kept as written.\n"
    "\n"
)

BLOCK_BEGIN = ("--- harness block {name} begin (written by the harness; replaced when {name} is run "
               "again; your own notes go outside harness blocks) ---")
BLOCK_END = "--- harness block {name} end ---"
_BLOCK_BEGIN = re.compile(r"^--- harness block (?P<name>\S+) begin\b")
_BLOCK_END = re.compile(r"^--- harness block (?P<name>\S+) end ---\s*$")
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
        width = f", n_base = {cfg['n_base']}" if "n_base" in cfg else ""
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


def block_name(run_dir: Path) -> str:
    """The name a run's block goes by: its folder's name ('run_1'), without white space."""
    return re.sub(r"\s+", "_", Path(run_dir).name)


def previous_run_dir(record: RunRecord) -> Path | None:
    """The run a numbered run's configuration is compared with: run_{n-1} beside it, or for
    run_1 the baseline (the run_0 beside it, else the top-level run_0 of a study folder)."""
    if not record.number:
        return None
    if record.number == 1:
        return baseline_run_dir(record.path.parent)
    candidate = record.path.parent / f"run_{record.number - 1}"
    return candidate if candidate.is_dir() else None


def notes_section(run_dir: Path) -> str:
    """One run's harness block of notes.txt: its begin line, title, Results, Description and
    warnings, and its end line; no blank line."""
    record = load_run(run_dir)
    name = block_name(record.path)
    results = {"variant": record.variant, **{k: _round(v) for k, v in headline_metrics(record).items()},
               "degenerate": record.degenerate}
    lines = [f"Run {_run_key(record.path)}: {run_title(record)}",
             f"Results: {json.dumps(results)}",
             f"Description: {_description(record, previous_run_dir(record))}"]
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
    body = "".join(line.replace("\n", " ").rstrip() + "\n" for line in lines)
    return BLOCK_BEGIN.format(name=name) + "\n" + body + BLOCK_END.format(name=name) + "\n"


# =============================================================================================
# The notebook file
# =============================================================================================
def harness_blocks(text: str) -> list[tuple[str, int, int]]:
    """(run folder name, start, end) of each harness block in `text`, as character offsets: from
    its begin line's first character to just after its end line (and that line's newline)."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    found, i = [], 0
    while i < len(lines):
        begin = _BLOCK_BEGIN.match(lines[i])
        if not begin:
            i += 1
            continue
        for j in range(i + 1, len(lines)):
            if _BLOCK_BEGIN.match(lines[j]):
                break  # another block starts first: this begin line has no end; not a block
            end = _BLOCK_END.match(lines[j])
            if end and end.group("name") == begin.group("name"):
                found.append((begin.group("name"), offsets[i], offsets[j + 1]))
                i = j
                break
        i += 1
    return found


def text_outside_blocks(text: str) -> str:
    """The file's text with every harness block cut out: what the harness never changes."""
    kept, position = [], 0
    for _, start, end in harness_blocks(text):
        kept.append(text[position:start])
        position = end
    return "".join(kept) + text[position:]


def update_notes(notes_path: Path, run_dir: Path) -> str:
    """Write run_dir's harness block into notes.txt: in place of its earlier block (a second
    block of the same run is removed), else after the file's content (a new file starts with
    DEFAULT_HEADER). Returns the block."""
    notes_path, run_dir = Path(notes_path), Path(run_dir)
    block = notes_section(run_dir)
    name = block_name(run_dir)
    text = notes_path.read_text() if notes_path.exists() else DEFAULT_HEADER
    own = [(start, end) for block_run, start, end in harness_blocks(text) if block_run == name]
    if own:
        for start, end in reversed(own[1:]):
            text = text[:start] + text[end:]
        start, end = own[0]
        text = text[:start] + block + text[end:]
    else:
        if text and not text.endswith("\n"):
            text += "\n"
        if text.strip() and not text.endswith("\n\n"):
            text += "\n"  # a blank line between what was there and the new block
        text += block
    atomic_write_text(notes_path, text)
    return block


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="(Re)write runs' harness blocks of the lab notebook.")
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories, e.g. run_0 run_1")
    parser.add_argument("--notes", type=Path, default=None,
                        help=f"notebook file (default: the {NOTEBOOK} beside each run directory)")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        if not run_dir.is_dir():
            parser.error(f"{run_dir} is not a run directory")
        notes = args.notes or run_dir.resolve().parent / NOTEBOOK
        print(update_notes(notes, run_dir), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Is a run's SAE degenerate? The honesty rules of DESIGN 7, checked on any run's final_info.json.

A run's SAE is degenerate, and its other numbers mean nothing, when

* it trained for 0 steps;
* its base level fires nothing (L0 = 0) or more than half of its n_base latents (L0 > n_base/2);
* it explains less variance than the mean does (explained variance < 0), on our held-out
  tokens (group `training`) or in SAE-Bench's core eval (group `core`);
* every sparse probe on its latents is at chance: `sae_test_accuracy` and every
  `sae_top_{k}_test_accuracy` lie within CHANCE_TOLERANCE of 0.5.

Two shapes of final_info.json are read:

* ours (DESIGN 4): {group: {"means": {metric: float}, ...}};
* the legacy AI-Scientist template's flat dict that the project was seeded with, e.g.
  {"training_steps": 0, "final_loss": null, "layer": 19, "dict_size": 2304, "learning_rate": ...,
  "sparsity_penalty": ...}, possibly with one SAE-Bench result's keys merged in
  ("eval_result_metrics", "sae_cfg_dict", ...). `group_means` turns it into our groups, so
  every reader (the checks here, notes.py, plot.py) sees one shape.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, NamedTuple

from sae_harness.records.numbers import finite_number

CHANCE_TOLERANCE = 0.02
"""A probe accuracy within this distance of 0.5 counts as chance. SAE-Bench averages balanced
binary tasks; with ~1000 test examples per task a chance probe scatters by ~0.016 on one task
and far less on the mean over tasks, while a working SAE's top-1 probe is > 0.6. So 0.02 flags
only SAEs whose every probe, the full-width one included, carries no information."""

PROBE_METRIC = re.compile(r"^(llm|sae)_(top_(\d+)_)?test_accuracy$")
"""sae_test_accuracy, sae_top_5_test_accuracy, llm_top_1_test_accuracy, ..."""

LEGACY_TEMPLATE_KEYS = frozenset({"training_steps", "final_loss", "layer", "dict_size",
                                  "learning_rate", "sparsity_penalty"})
"""Top-level keys of the AI-Scientist SAE template's final_info.json."""
SAE_BENCH_KEYS = frozenset({"eval_type_id", "eval_result_metrics", "eval_config", "sae_cfg_dict",
                            "sae_lens_release_id", "sae_bench_commit_hash"})
"""Top-level keys of an SAE-Bench result file (as merged into the legacy flat dict)."""

CORE_METRICS = frozenset({
    "kl_div_score", "kl_div_with_ablation", "kl_div_with_sae", "ce_loss_score",
    "ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae", "explained_variance",
    "explained_variance_legacy", "mse", "cossim", "l2_norm_in", "l2_norm_out", "l2_ratio",
    "relative_reconstruction_bias", "l0", "l1", "freq_over_1_percent", "freq_over_10_percent",
    "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
    "average_max_encoder_cosine_sim", "average_max_decoder_cosine_sim", "frac_alive",
})
"""SAE-Bench core metric names (its CoreMetricCategories, flattened)."""
ABSORPTION_METRICS = frozenset({
    "mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
    "std_dev_absorption_fraction_score", "std_dev_full_absorption_score",
    "std_dev_num_split_features",
})
# nested blocks of a legacy dict that describe configuration, not results
_LEGACY_CONFIG_BLOCKS = frozenset({"eval_config", "sae_cfg_dict"})


class DegeneracyCheck(NamedTuple):
    reasons: list[str]
    """Why the SAE is degenerate; empty when no check failed."""
    unchecked: list[str]
    """Checks that could not be made, and why (a group or a size is unknown)."""


# =============================================================================================
# Reading either shape of final_info.json
# =============================================================================================
def _is_group(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("means"), dict)


def is_legacy_final_info(final_info: dict) -> bool:
    """True for the flat AI-Scientist template dict (no {group: {"means": ...}} entries)."""
    if not isinstance(final_info, dict) or any(_is_group(v) for v in final_info.values()):
        return False
    return bool((LEGACY_TEMPLATE_KEYS | SAE_BENCH_KEYS) & final_info.keys())


def _leaves(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, value) of every non-dict value in nested dicts; lists (per-item details) skipped."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, dict):
                yield from _leaves(value, path + (str(key),))
            elif not isinstance(value, list):
                yield path + (str(key),), value


def _legacy_means(flat: dict) -> dict[str, dict[str, float]]:
    """Our groups from a legacy flat dict: training steps/loss and any SAE-Bench metrics in it."""
    groups: dict[str, dict[str, float]] = {}
    training = {}
    if finite_number(flat.get("training_steps")) is not None:
        training["steps"] = finite_number(flat["training_steps"])
    if finite_number(flat.get("final_loss")) is not None:
        training["final_loss"] = finite_number(flat["final_loss"])
    if training:
        groups["training"] = training
    for path, value in _leaves(flat):
        number, name = finite_number(value), path[-1]
        if number is None or _LEGACY_CONFIG_BLOCKS & set(path[:-1]):
            continue
        if PROBE_METRIC.match(name):
            group = "sparse_probing"
        elif name in ABSORPTION_METRICS:
            group = "absorption"
        elif name in CORE_METRICS and len(path) > 1:  # core metrics sit in their categories
            group = "core"
        else:
            continue
        groups.setdefault(group, {}).setdefault(name, number)
    return groups


def group_means(final_info: dict) -> dict[str, dict[str, float]]:
    """{group: {metric: float}} from final_info.json in our shape or the legacy flat one.

    Non-finite and non-numeric means are dropped. In a legacy dict, training_steps and
    final_loss become training's steps and final_loss, and the SAE-Bench metrics found in it
    go to sparse_probing, core or absorption by their names.
    """
    if not isinstance(final_info, dict):
        return {}
    groups = {}
    for name, value in final_info.items():
        if _is_group(value):
            groups[name] = {k: n for k, v in value["means"].items() if (n := finite_number(v)) is not None}
    flat = {k: v for k, v in final_info.items() if not _is_group(v)}
    if (LEGACY_TEMPLATE_KEYS | SAE_BENCH_KEYS) & flat.keys():
        for name, means in _legacy_means(flat).items():
            groups.setdefault(name, {})
            for metric, number in means.items():
                groups[name].setdefault(metric, number)
    return groups


def _find_key(obj: Any, key: str) -> Any:
    """The first value stored under `key` anywhere in nested dicts (None if absent)."""
    for path, value in _leaves(obj):
        if path[-1] == key:
            return value
    return None


def _legacy_sae_layer(flat: dict) -> int | None:
    """The layer of the SAE that SAE-Bench evaluated: hook_layer, else blocks.L in hook_name."""
    layer = finite_number(_find_key(flat, "hook_layer"))
    if layer is not None:
        return int(layer)
    hook_name = _find_key(flat, "hook_name")
    match = re.match(r"blocks\.(\d+)\.", hook_name) if isinstance(hook_name, str) else None
    return int(match.group(1)) if match else None


class RunFacts(NamedTuple):
    """What the checks read of a run, in one shape whichever shape its files have."""

    means: dict[str, dict[str, float]]
    base_width: int | None
    """The base level's width, Config.n_base (None: not recorded)."""
    has_concept_level: bool | None
    training_note: str | None
    """How the training record reads, when it is not this harness's (the seeded template's)."""
    trained_layer: int | None
    """The layer the SAE was trained on, when the files say."""
    evaluated_layer: int | None
    """The layer of the SAE that SAE-Bench evaluated, when the files say."""


def read_run_facts(final_info: dict, config: dict | None = None) -> RunFacts:
    """The facts of a run from final_info.json (ours or the legacy flat one) and config.json.

    This is the only place that knows the legacy template's keys: its training_steps and
    final_loss, its `layer`, `dict_size` (a vanilla SAE: the whole dictionary is the base level)
    and the SAE-Bench sae_cfg_dict merged into it.
    """
    means = group_means(final_info)
    cfg = (config or {}).get("config") if isinstance(config, dict) else None
    cfg = cfg or {}
    width = next((int(c) for c in (cfg.get("n_base"), means.get("training", {}).get("n_base"))
                  if finite_number(c)), None)
    concept = cfg["concept_k"] > 0 if finite_number(cfg.get("concept_k")) is not None else None
    trained = (config or {}).get("preset", {}).get("hook_layer") if isinstance(config, dict) else None
    note = evaluated = None
    if is_legacy_final_info(final_info):
        width = width or next((int(c) for c in (final_info.get("dict_size"), _find_key(final_info, "d_sae"))
                               if finite_number(c)), None)
        concept = False
        loss = final_info.get("final_loss", "absent")
        steps = final_info.get("training_steps")
        note = (f"legacy AI-Scientist template result: training_steps = {steps}, "
                f"final_loss = {'null' if loss is None else loss}")
        if "training_steps" not in final_info and loss is None:  # nothing says it trained at all
            means.setdefault("training", {})["steps"] = 0.0
            note = "legacy final_info: no training_steps and final_loss is null"
        trained = finite_number(final_info.get("layer"))
        evaluated = _legacy_sae_layer(final_info)
    return RunFacts(means, width, concept, note, None if trained is None else int(trained), evaluated)


# =============================================================================================
# The checks
# =============================================================================================
# The dead-level thresholds, all read on the held-out tokens (the fraction of a level's latents
# that never fire there). The training-time warning is another measurement (latents silent over
# the last dead_window_tokens of training) with its own threshold, experiment.py's
# Config.dead_warning_fraction, which the coder may edit.
DEAD_LEVEL_WARNING = 0.9
"""A level with more than this fraction dead gets a warning in the run's output and record."""
NEARLY_DEAD = 0.95
"""A concept level with at least this fraction of its latents never firing on the held-out
tokens is (nearly) entirely dead: the SAE is a ReLU SAE with an unused second dictionary, and
the run is flagged degenerate (DESIGN 7)."""


def _training_detail(facts: RunFacts) -> str:
    return f" ({facts.training_note})" if facts.training_note else ""


def _check_training_steps(facts: RunFacts, reasons: list[str], unchecked: list[str]) -> None:
    steps = facts.means.get("training", {}).get("steps")
    if steps is not None and steps < 1:
        reasons.append(f"0 training steps{_training_detail(facts)}")
    elif steps is None:
        unchecked.append("training steps unknown (no training group)")


def _check_base_l0(facts: RunFacts, reasons: list[str], unchecked: list[str]) -> None:
    training, core = facts.means.get("training", {}), facts.means.get("core", {})
    n_base = facts.base_width
    l0_base, source = training.get("l0_base"), "held-out tokens"
    if l0_base is None and facts.has_concept_level is False:
        l0_base, source = core.get("l0"), "SAE-Bench core"  # a vanilla SAE: core L0 is the base L0
    if l0_base is not None:
        if l0_base == 0:
            reasons.append(f"base L0 is 0 on {source}: no base latent fires")
        elif n_base is None:
            unchecked.append(f"base L0 {l0_base:.1f} not compared with n_base/2: "
                             "the base width (config n_base) unknown")
        elif l0_base > n_base / 2:
            reasons.append(f"base L0 {l0_base:.1f} exceeds n_base/2 = {n_base / 2:g} (n_base = {n_base}) "
                           f"on {source}")
    elif core.get("l0") == 0:
        reasons.append("L0 is 0 in SAE-Bench core: no latent fires")
    else:
        unchecked.append("base L0 unknown (no training l0_base)")


def _check_concept_level_fires(facts: RunFacts, reasons: list[str], unchecked: list[str]) -> None:
    dead_concept = facts.means.get("training", {}).get("dead_fraction_concept")
    if facts.has_concept_level and dead_concept is not None and dead_concept >= NEARLY_DEAD:
        reasons.append(f"concept level (nearly) entirely dead: {dead_concept:.1%} of its latents "
                       f"never fire on held-out tokens")


def _check_explained_variance(facts: RunFacts, reasons: list[str], unchecked: list[str]) -> None:
    # core: the centred figure where present (SAE-Bench 0.6.0's own divides by an uncentred
    # moment and can stay near 1 for any SAE; see evals/core.py)
    training, core = facts.means.get("training", {}), facts.means.get("core", {})
    core_ev = "explained_variance_centered" if "explained_variance_centered" in core else "explained_variance"
    for group, key, where in (("training", "explained_variance", "held-out tokens"),
                              ("core", core_ev, "SAE-Bench core")):
        ev = facts.means.get(group, {}).get(key)
        if ev is not None and ev < 0:
            reasons.append(f"explained variance {ev:.3f} < 0 on {where}")
    if "explained_variance" not in training and core_ev not in core:
        unchecked.append("explained variance unknown (neither training nor core has it)")


def _check_probes_above_chance(facts: RunFacts, reasons: list[str], unchecked: list[str]) -> None:
    probes = {k: v for k, v in facts.means.get("sparse_probing", {}).items()
              if k.startswith("sae_") and PROBE_METRIC.match(k)}
    if probes and all(abs(v - 0.5) <= CHANCE_TOLERANCE for v in probes.values()):
        ks = sorted(int(m.group(3)) for k in probes if (m := PROBE_METRIC.match(k)).group(3))
        which = (["sae_test_accuracy"] if "sae_test_accuracy" in probes else []) + \
                ([f"sae_top_k_test_accuracy for k = {', '.join(map(str, ks))}"] if ks else [])
        reasons.append(f"all SAE probes at chance: {' and '.join(which)} within "
                       f"{CHANCE_TOLERANCE} of 0.5")
    elif not probes:
        unchecked.append("probe accuracies unknown (no sparse_probing SAE accuracies)")


def _check_evaluated_layer(facts: RunFacts, reasons: list[str], unchecked: list[str]) -> None:
    """The SAE that SAE-Bench evaluated is the one that was trained (its layer)."""
    if facts.trained_layer is not None and facts.evaluated_layer is not None \
            and facts.trained_layer != facts.evaluated_layer:
        reasons.append(f"the SAE was trained on layer {facts.trained_layer} but SAE-Bench evaluated "
                       f"an SAE at hook_layer {facts.evaluated_layer}{_training_detail(facts)}")


DEGENERACY_CHECKS = (_check_training_steps, _check_base_l0, _check_concept_level_fires,
                     _check_explained_variance, _check_probes_above_chance, _check_evaluated_layer)
"""DESIGN 7's checks, in the order their reasons are listed. Each adds a reason when the run
fails it, or a line to `unchecked` when the run's files do not allow it."""


def check_degeneracy(final_info: dict, config: dict | None = None) -> DegeneracyCheck:
    """Every DESIGN 7 check that the run's files allow, with the ones they do not allow listed."""
    facts = read_run_facts(final_info, config)
    reasons: list[str] = []
    unchecked: list[str] = []
    for check in DEGENERACY_CHECKS:
        check(facts, reasons, unchecked)
    return DegeneracyCheck(reasons, unchecked)


def degeneracy_reasons(final_info: dict, config: dict | None = None) -> list[str]:
    """Why the run's SAE is degenerate (DESIGN 7), or [] when no check fails.

    `final_info` is final_info.json in our shape or the legacy flat one; `config` is the run's
    config.json (its config.n_base gives n_base for the L0 > n_base/2 check), or None.
    """
    return check_degeneracy(final_info, config).reasons

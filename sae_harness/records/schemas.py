"""The schemas of the JSON files our own analyses write (weights.json, hierarchy.json, the
baseline frontier's run_0/frontier.json and final_info.json's vs_baseline group), in the
style of SAE-Bench's eval_output.py: a typed model per file, validated when written and when read.

Writers build the dict and pass it through `validated(Schema, data)`; readers (plot.py) call
`read_validated(Schema, path)` and use attributes by name. An unknown or missing field is an
error at both ends (extra="forbid"), so a writer and its readers cannot drift apart silently.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field


class Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- weights.json -----------------------------------------------------------------------------
class Histogram(Schema):
    bin_edges: list[float]
    counts: list[int]


class OverflowHistogram(Histogram):
    below_first_edge: int = Field(description="values below the first edge")
    above_last_edge: int = Field(description="values above the last edge")


class Distribution(Schema):
    """Statistics over latents (population std) with a histogram."""

    mean: float
    std: float
    min: float
    max: float
    histogram: Histogram


class LevelNorms(Schema):
    encoder_column_norm: Distribution
    decoder_row_norm: Distribution


class PerConcept(Schema):
    mean: float
    median: float
    histogram: Histogram
    per_concept: list[float]


class ConceptConnectivity(Schema):
    """Sparsity of W_enc2 (n_base, n_concept): how many base latents each concept reads."""

    frac_abs_below: dict[str, float] = Field(description="fraction of entries with |w| < t")
    frac_rel_below: dict[str, float] = Field(description="fraction with |w| < t * its column's max")
    zero_entries: int
    zero_columns: int
    abs_log10_histogram: OverflowHistogram
    effective_base_per_concept: PerConcept = Field(description="participation ratio per column")
    entries_above_1pct_of_max: PerConcept


class ConceptCosines(Schema):
    concept: int
    top_base: list[int]
    top_weights: list[float]
    cosines: list[float]
    random_cosine_mean: float | None


class ConceptBaseDecoderCosine(Schema):
    top_m: int
    null_m: int
    top1_mean: float
    topm_mean: float
    random_mean: float | None = Field(description="None when no base latent is left outside the top-m")
    per_concept: list[ConceptCosines]


class WeightsOutput(Schema):
    """weights.json: weight distributions per level (evals/weights.py)."""

    format_version: int
    definitions: dict[str, str]
    parameters: dict[str, Any]
    levels: dict[str, LevelNorms] = Field(description="'base' and, with a concept level, 'concept'")
    w_enc2: ConceptConnectivity | None = None
    concept_base_decoder_cosine: ConceptBaseDecoderCosine | None = None


# --- hierarchy.json ---------------------------------------------------------------------------
class PairMeans(Schema):
    mi_mean: float
    nmi_mean: float
    h_b_given_c_mean: float
    p_b_given_c_mean: float
    leakage_mean: float | None = None
    sibling_nmi_mean: float | None = None


class ConceptHierarchy(Schema):
    concept: int
    firings: int
    firing_rate: float
    top_base: list[int]
    top_weights: list[float]
    top_base_firing_rate: list[float]
    mi: list[float]
    nmi: list[float]
    h_b_given_c: list[float]
    p_b_given_c: list[float]
    leakage: float
    sibling_nmi: float
    null_sibling_nmi_mean: float
    null_mi_mean: float
    null_nmi_mean: float
    null_h_b_given_c_mean: float
    null_p_b_given_c_mean: float
    null_leakage_mean: float


class HierarchyOutput(Schema):
    """hierarchy.json: hierarchy consistency by mutual information (evals/hierarchy.py)."""

    format_version: int
    definitions: dict[str, str]
    parameters: dict[str, Any]
    means: dict[str, float]
    top1: PairMeans
    null_draws: list[PairMeans]
    concepts: list[ConceptHierarchy]
    seconds: float


# --- run_0/frontier.json and the vs_baseline group (frontier.py) ------------------------------
class FrontierPoint(Schema):
    family: str
    name: str
    parameter: dict[str, float]
    seed: int
    l0_total: float
    metrics: dict[str, float]
    """Headline metric -> value (frontier.HEADLINE_METRICS; a failed eval's metric is absent)."""
    seconds: float | None
    folder: str


class SeedStats(Schema):
    mean: float
    std: float
    seeds: int
    values: list[float]


class SeedSpread(Schema):
    families: dict[str, dict[str, SeedStats]]
    max_std: dict[str, float]
    runs: dict[str, list[dict[str, float]]] = Field(default_factory=dict)


class FrontierOutput(Schema):
    """run_0/frontier.json: the baseline families across L0 and the seed spread."""

    format: int
    key: dict[str, Any]
    machine: str
    lr: dict[str, float]
    width: int
    families_built: list[str]
    seeds_built: bool
    points: list[FrontierPoint]
    seed_spread: SeedSpread
    seconds: dict[str, float]


class VsBaselineExtra(Schema):
    """final_info.json's vs_baseline group besides its means (`<family>.<metric>.frontier` /
    `.difference`, `l0_total`)."""

    out_of_range: dict[str, str]
    within_seed_noise: list[str]
    seed_spread: dict[str, float]
    noise_rule: str


S = TypeVar("S", bound=Schema)


def validated(schema: type[S], data: dict) -> dict:
    """`data` after checking it against `schema` (a pydantic ValidationError if it does not fit)."""
    schema.model_validate(data)
    return data


def read_validated(schema: type[S], path: Path) -> S:
    """The JSON file at `path` as a `schema` object."""
    with open(path) as handle:
        return schema.model_validate(json.load(handle))

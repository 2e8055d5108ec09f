"""The labelled datasets inside the `sae-probes` wheel, split into probing data and training text.

The wheel carries the cleaned datasets of Kantamneni et al. (2025), "Are Sparse Autoencoders
Useful? A Case Study in Sparse Probing", as `sae_probes/data/cleaned_data/*.csv.zst` (columns
`prompt`, `target`). The embedded setting probes with a suite that mirrors SAE-Bench's sparse
probing datasets, and trains the SAE on the text of the files that the suite does not use.

Each suite dataset is multi-class, like SAE-Bench's: every class becomes one binary task
(class vs. the other classes of its dataset), so the suite below has 13 binary tasks.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import pandas as pd

# dataset name -> class name -> (file stem, target value selecting that class's rows)
EMBEDDED_PROBING_SUITE: dict[str, dict[str, tuple[str, int | str]]] = {
    # mirrors LabHC/bias_in_bios (professions)
    "sae_probes/professions": {
        "journalist": ("59_wikidata_occupation_isjournalist", 1),
        "athlete": ("60_wikidata_occupation_isathlete", 1),
        "actor": ("61_wikidata_occupation_isactor", 1),
        "politician": ("62_wikidata_occupation_ispolitician", 1),
        "singer": ("63_wikidata_occupation_issinger", 1),
    },
    # mirrors canrager/amazon_reviews_mcauley_1and5_sentiment (two mirrored classes, as there)
    "sae_probes/amazon_5star": {
        "5_star": ("157_amazon_5star", 1),
        "not_5_star": ("157_amazon_5star", 0),
    },
    # mirrors codeparrot/github-code (programming language)
    "sae_probes/code": {
        "C": ("158_code_C", 1),
        "Python": ("159_code_Python", 1),
        "HTML": ("160_code_HTML", 1),
    },
    # mirrors fancyzhx/ag_news (news topic; AG News classes 0, 1, 2)
    "sae_probes/ag_news": {
        "world": ("161_agnews_0", 1),
        "sports": ("162_agnews_1", 1),
        "business": ("163_agnews_2", 1),
    },
}

RELATED_TO_SUITE = (
    # AG News headlines again, under other labels: keep them out of the training text too
    "97_news_class",
    "139_news_class_Politics",
    "140_news_class_Technology",
    "141_news_class_Entertainment",
)


def cleaned_data_dir() -> Path:
    return Path(str(files("sae_probes").joinpath("data", "cleaned_data")))


@lru_cache(maxsize=None)
def read_dataset(stem: str) -> pd.DataFrame:
    """One cleaned sae-probes dataset as a DataFrame with `prompt` (str) and `target` columns."""
    frame = pd.read_csv(cleaned_data_dir() / f"{stem}.csv.zst")
    frame["prompt"] = frame["prompt"].astype(str)
    return frame


def suite_file_stems() -> set[str]:
    return {stem for classes in EMBEDDED_PROBING_SUITE.values() for stem, _ in classes.values()}


def training_text_file_stems() -> list[str]:
    """Every cleaned dataset that neither the probing suite nor its relatives use, sorted."""
    held_out = suite_file_stems() | set(RELATED_TO_SUITE)
    stems = sorted(p.name[: -len(".csv.zst")] for p in cleaned_data_dir().glob("*.csv.zst"))
    return [s for s in stems if s not in held_out]


def suite_texts() -> set[str]:
    """Every text used by the probing suite (kept out of the training text)."""
    return {text for stem in suite_file_stems() for text in read_dataset(stem)["prompt"]}

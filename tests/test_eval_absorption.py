"""SAE-Bench feature absorption on the tiny Gemma-2 (random weights, 2 blocks).

SAE-Bench's prompts need a tokenizer that keeps their layout ("cat has the first letter: C" with
the word and the answer " C" one token each, as Gemma's tokenizers do); the fixture's 512-token
BPE does not (it splits most answers), and the eval refuses it. The tests give the tiny model a
512-token BPE learnt from such lines instead, and, since a random model has no first-letter
features, plant some: a direction per letter added to the embeddings of 12 letters' tokens.
12 letters are too few for SAE-Bench's defaults (20 letters with an LLM-probe F1 above 0.6): the
eval must say so and write nothing. With the thresholds lowered through AbsorptionSizes it runs
to the end and writes SAE-Bench's JSON. Nothing may be written inside site-packages (SAE-Bench's
default artifact folders are there).
"""

import importlib
import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import experiment as E
from saes import hierarchical_sae
from tiny_gemma2 import WIDTHS
from sae_harness.errors import ConfigurationError
from sae_harness.evals import absorption as A
from sae_harness.evals import absorption_probe as P
from sae_harness.evals import absorption_prompts as V
from sae_harness.evals.sae_bench_results import read_eval_output

TEMPLATE = "{word} has the first letter:"
PLANTED = "abcdefghijkl"
"""Letters whose tokens carry a first-letter direction in the test model."""

TINY_SIZES = A.ABSORPTION_SIZES["tiny"]
"""Two words per letter (one train, one test word each), to keep the forward passes few;
everything else is SAE-Bench's default."""

LOWERED = replace(TINY_SIZES, lowered_thresholds=A.Thresholds(min_GT_probe_f1=0.6, min_feats_for_eval=10))


def letter_tokenizer():
    """A 512-token byte-level BPE (the fixture's recipe) learnt from SAE-Bench's ICL lines for
    words of Python's docstrings, 60 lines per letter: ' has', ' the', ' first', ' letter' and
    the answers ' A'..' Z' become single tokens."""
    from sae_harness.data.text_sources import python_docstrings
    from tiny_gemma2 import build_tokenizer

    words = sorted({w for doc in python_docstrings() for w in re.findall(r"\b[a-zA-Z]{2,12}\b", doc)})
    rng = random.Random(0)
    lines = []
    for letter in P.LETTERS:
        group = [w for w in words if w[0].lower() == letter] or [letter]
        lines += [f"\n{w} has the first letter: {letter.upper()}" for w in rng.choices(group, k=60)]
    return build_tokenizer(lines)


@pytest.fixture(scope="module")
def letter_lm(tiny_lm):
    """The tiny model with letter_tokenizer() and, for every alphabetic token whose first letter
    is in PLANTED, a unit direction per letter (times 3 mean embedding norms) added to its
    embedding; both restored afterwards."""
    preset, lm = tiny_lm
    model, W_E = lm.model, lm.model.embed.W_E
    original_tokenizer, original_W_E = model.tokenizer, W_E.detach().clone()
    model.tokenizer = tokenizer = letter_tokenizer()
    directions = torch.nn.functional.normalize(
        torch.randn(26, W_E.shape[1], generator=torch.Generator().manual_seed(0)), dim=-1)
    with torch.no_grad():
        scale = 3 * W_E.norm(dim=-1).mean()
        for token, index in tokenizer.vocab.items():
            word = tokenizer.convert_tokens_to_string([token]).strip()
            if word.isascii() and word.isalpha() and word[0].lower() in PLANTED:
                W_E[index] += scale * directions[P.LETTERS.index(word[0].lower())]
    try:
        yield preset, replace(lm, weights_id=lm.weights_id + "+letter-tokenizer+planted-letters")
    finally:
        model.tokenizer = original_tokenizer
        with torch.no_grad():
            W_E.copy_(original_W_E)


def tiny_sae(seed: int) -> E.HierarchicalSAE:
    return hierarchical_sae(WIDTHS["d_model"], 256, 64, 4, model_name="google/gemma-2-2b", hook_layer=1,
                             context_size=64, seed=seed)


def sae_bench_files() -> dict[str, int]:
    """Every file under the installed sae_bench package, with its size."""
    for name in ("common", "k_sparse_probing", "feature_absorption", "main", "probing"):
        importlib.import_module(f"sae_bench.evals.absorption.{name}")  # byte-compile first
    root = Path(importlib.import_module("sae_bench").__file__).parent
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def probes_root(tmp_path_factory):
    return tmp_path_factory.mktemp("absorption_probes")


def run(model, tmp_path, probes_root, sae, sizes, name="absorption"):
    preset, lm = model
    return A.run_absorption(sae, lm, preset, tmp_path / "run" / f"{name}.json", probes_root,
                            tmp_path / f"work_{name}", sizes=sizes,
                            words_path=tmp_path / "run" / f"{name}_words.jsonl")


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------
def test_only_sae_bench_0_6_0_is_accepted(monkeypatch, tiny_lm, tmp_path):
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.5.1" if name == "sae-bench" else real_version(name))
    with pytest.raises(ConfigurationError, match=r"pinned to sae-bench==0\.6\.0.*0\.5\.1"):
        run(tiny_lm, tmp_path, tmp_path / "probes", tiny_sae(0), TINY_SIZES)
    assert not any(tmp_path.iterdir())


def test_a_tokenizer_that_breaks_sae_bench_prompts_is_refused(tiny_lm, tmp_path):
    _, lm = tiny_lm  # the fixture's BPE: ' Q' is two tokens, ' A' one
    with pytest.raises(ConfigurationError, match="does not suit this tokenizer"):
        V.locate_word_token(lm.tokenizer, TEMPLATE)
    with pytest.raises(ConfigurationError, match="does not suit this tokenizer"):
        run(tiny_lm, tmp_path, tmp_path / "probes", tiny_sae(0), None)  # the preset's sizes
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("template", [TEMPLATE, "{word} has the first letter of it:"])
def test_word_position_is_read_from_the_tokenizer(letter_lm, template):
    tokenizer = letter_lm[1].tokenizer
    found = V.locate_word_token(tokenizer, template)
    words = 0
    for token, token_id in tokenizer.vocab.items():
        word = tokenizer.convert_tokens_to_string([token])
        if word.strip().isascii() and word.strip().isalpha() and token not in found.excluded_tokens:
            ids = tokenizer("\n" + template.format(word=word), add_special_tokens=False)["input_ids"]
            assert ids[found.word_token_pos] == token_id, word
            words += 1
    assert words == found.words - len(found.excluded_tokens) > 200
    suffix = tokenizer(template.format(word=""), add_special_tokens=False)["input_ids"]
    assert found.word_token_pos == -1 - len(suffix)  # -6 for the first, as for Gemma


@pytest.mark.slow
def test_gemma3_tokenizer_puts_the_word_where_sae_bench_expects_it():
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    from transformers import AutoTokenizer

    cache = Path(os.environ.get("EXPERIMENT_CACHE", Path.home() / ".cache" / "sae_harness"))
    checkpoints = sorted((cache / "models").glob("gemma-3-270m-bf16-*"))
    if not checkpoints:
        pytest.skip("no converted Gemma-3-270M checkpoint in the cache (run the embedded preset once)")
    found = V.locate_word_token(AutoTokenizer.from_pretrained(checkpoints[-1]), TEMPLATE)
    assert found.word_token_pos == AbsorptionEvalConfig().prompt_token_pos == -6
    # the byte-fallback tokens <0x41>.. ('A'..) are the same words as the tokens 'A'..; besides
    # them only a handful of words (' YYYY', ...) re-tokenise in the prompt
    others = [t for t in found.excluded_tokens if not re.fullmatch(r"<0x[0-9A-F]{2}>", t)]
    assert found.words > 100_000 and len(others) < 10


def test_word_sample_keeps_proportions_and_a_floor_per_letter():
    words = [f"a{i}" for i in range(1000)] + [f"B{i}" for i in range(100)] + [f" x{i}" for i in range(5)]
    sample = P.sample_words(words, 110, 10, random.Random(0))
    letters = [P.first_letter(w) for w in sample]
    assert letters.count("a") == 100 and letters.count("b") == 10 and letters.count("x") == 5
    assert len(set(sample)) == len(sample) and set(sample) <= set(words)
    assert P.sample_words(words, None, 10, random.Random(0)) == words


def test_split_puts_every_letter_with_two_words_on_both_sides():
    words = [f"a{i}" for i in range(50)] + ["zz", "zy"] + ["q1"]
    train, test = P.split_words(words, random.Random(1))
    assert sorted(train + test) == sorted(words)
    assert {P.first_letter(w) for w in test} == {"a", "z"}
    assert sum(w.startswith("a") for w in test) == 10  # 80/20 within the letter


def test_probe_folder_depends_on_model_layer_and_prompt():
    key = {"transformer_lens_name": "gemma-2-2b", "layer": 12, "prompt_token_pos": -6,
           "prompt_template": TEMPLATE, "weights_id": "w"}
    folder = P.probe_folder(Path("/p"), key)
    assert folder == P.probe_folder(Path("/p"), dict(key))
    for change in ({"layer": 11}, {"prompt_token_pos": -5}, {"weights_id": "v"},
                   {"prompt_template": "{word}:"}):
        assert P.probe_folder(Path("/p"), {**key, **change}) != folder



def test_with_too_few_first_letter_features_it_fails_clearly_and_writes_nothing(
        letter_lm, tmp_path, probes_root, monkeypatch):
    monkeypatch.chdir(tmp_path)  # SAE-Bench's run_eval would write artifacts/ here
    before = sae_bench_files()
    with pytest.raises(A.AbsorptionNotEvaluable) as failure:
        run(letter_lm, tmp_path, probes_root, tiny_sae(0), TINY_SIZES)
    message = str(failure.value)
    found = re.search(r"only (\d+) letters have an LLM-probe F1 above 0\.6 \(SAE-Bench needs 20\)", message)
    assert found and int(found.group(1)) < 20, message
    f1 = dict(re.findall(r"\b([a-z]) (\d\.\d\d)\b", message.split("per letter:")[1]))
    assert all(float(f1[letter]) > 0.6 for letter in PLANTED), message
    assert not (tmp_path / "run").exists()
    assert sae_bench_files() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work_absorption"]
    # the LLM probe is complete and kept for the next run with this model and layer
    (folder,) = [p for p in probes_root.iterdir() if not p.name.startswith(".")]
    assert json.loads((folder / P.PROBE_KEY).read_text())["weights_id"].endswith("+planted-letters")
    assert all((folder / "gemma-2-2b" / "layer_1" / name).is_file() for name in P.PROBE_FILES)


@pytest.fixture(scope="module")
def completed(letter_lm, probes_root, tmp_path_factory):
    """One run to the end, with the thresholds lowered: what it returned and left behind."""
    folder = tmp_path_factory.mktemp("completed")
    sae = tiny_sae(1)
    state = {k: v.clone() for k, v in sae.state_dict().items()}
    before = sae_bench_files()
    means = run(letter_lm, folder, probes_root, sae, LOWERED, name="same")
    return dict(folder=folder, sae=sae, state=state, means=means, site_packages=(before, sae_bench_files()),
                latents=json.loads((folder / "work_same" / "both" / "k_sparse_probing.json").read_text()))


def test_with_lowered_thresholds_it_writes_sae_bench_json(completed, letter_lm):
    from sae_bench.evals.absorption.eval_output import AbsorptionEvalOutput

    means, sae = completed["means"], completed["sae"]
    out = read_eval_output(completed["folder"] / "run" / "same.json", AbsorptionEvalOutput)
    metrics = out.eval_result_metrics.mean
    for name in ("mean_absorption_fraction_score", "mean_full_absorption_score",
                 "mean_num_split_features", "std_dev_absorption_fraction_score",
                 "std_dev_full_absorption_score", "std_dev_num_split_features"):
        assert means[name] == pytest.approx(getattr(metrics, name)), name
    assert all(isinstance(v, float) and v == v for v in means.values())
    assert means["thresholds_lowered"] == 1.0
    assert means["min_GT_probe_f1"] == out.eval_config.min_GT_probe_f1 == 0.6
    assert means["min_feats_for_eval"] == out.eval_config.min_feats_for_eval == 10
    assert out.eval_result_unstructured["sae_bench_default_thresholds"] == {
        "min_GT_probe_f1": 0.6, "min_feats_for_eval": 20}
    f1 = out.eval_result_unstructured["llm_probe_f1_by_letter"]
    letters = [d.first_letter for d in out.eval_result_details]
    assert means["letters_evaluated"] == len(letters) >= 10
    assert all(f1[letter] > 0.6 for letter in letters) and set(PLANTED) <= set(letters)
    for d in out.eval_result_details:
        assert 0.0 <= d.mean_absorption_fraction <= 1.0 and 0.0 <= d.full_absorption_rate <= 1.0
        assert 0 <= d.num_full_absorption <= d.num_probe_true_positives and d.num_split_features >= 1
    found = V.locate_word_token(letter_lm[1].tokenizer, TEMPLATE)
    assert out.eval_config.prompt_token_pos == found.word_token_pos
    assert out.sae_cfg_dict["d_sae"] == 256 + 64
    assert out.sae_bench_commit_hash.startswith("sae-bench==0.6.0")
    before, after = completed["site_packages"]
    assert after == before
    # the caller's SAE is untouched (the eval casts a copy to the model's dtype)
    assert sae.dtype == torch.float32
    assert all(torch.equal(v, completed["state"][k]) for k, v in sae.state_dict().items())


def test_the_llm_probe_is_reused_but_per_sae_results_never_are(completed, letter_lm, probes_root):
    folder = completed["folder"]
    again = run(letter_lm, folder, probes_root, tiny_sae(2), LOWERED, name="same")
    assert again["llm_probe_cached"] == 1.0
    assert len([p for p in probes_root.iterdir() if not p.name.startswith(".")]) == 1
    # SAE-Bench keys its per-SAE files by SAE name, the same for both SAEs: they were recomputed
    assert json.loads((folder / "work_same" / "both" / "k_sparse_probing.json").read_text()) != completed["latents"]


def test_each_level_is_scored_alone_and_the_word_table_names_each_latents_level(completed):
    """base_only / concept_only: SAE-Bench's chain on a copy whose encode silences the other
    level; the per-word table says which level each main and absorbing latent belongs to."""
    means = completed["means"]
    for view in ("base_only", "concept_only"):
        for metric in A.LEVEL_METRICS:
            assert 0 <= means[f"{view}_{metric}"] < float("inf"), (view, metric)
    low, high = means["mean_absorption_fraction_ci95_low"], means["mean_absorption_fraction_ci95_high"]
    assert low <= means["mean_absorption_fraction_score"] <= high  # (all 0 for this random SAE)
    rows = [json.loads(line) for line in
            (completed["folder"] / "run" / "same_words.jsonl").read_text().splitlines()]
    views = {row["view"] for row in rows}
    assert views == {"both", "base_only", "concept_only"}
    for row in rows:
        levels = {level for _, level in row["main_latents"]}
        if row["view"] == "base_only":
            assert levels <= {"base"}, row
        if row["view"] == "concept_only":
            assert levels <= {"concept"}, row
    assert all(0 <= row["absorption_fraction"] <= 1 for row in rows)


def test_the_bootstrap_interval_holds_the_mean_and_narrows_with_more_letters():
    few = A.bootstrap_interval([0.1, 0.5, 0.3, 0.2], seed=0)
    many = A.bootstrap_interval([0.1, 0.5, 0.3, 0.2] * 10, seed=0)
    assert few[0] < 0.275 < few[1] and many[0] < 0.275 < many[1]
    assert many[1] - many[0] < few[1] - few[0]

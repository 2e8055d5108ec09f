"""SAE-Bench core metrics on an already loaded model and held-out documents.

    means = run_core(sae, lm, preset, heldout_documents, run_dir / "core.json")

SAE-Bench's own `sae_bench.evals.core.main.run_evals` does the work, with every metric switched
on as its command line does for a full run: KL divergence and CE loss with the SAE spliced in
vs. zero ablation (`kl_div_score`, `ce_loss_score`), L2 norms and their ratio, L0/L1, explained
variance, MSE, cosine similarity, per-latent density and weight statistics, and the summary
`misc_metrics` (`frac_alive`, `freq_over_1_percent`, ...) from `calculate_misc_metrics`. BOS, EOS
and PAD positions are left out of every metric and are not replaced by the reconstruction
(`ignore_tokens` and `exclude_special_tokens_from_reconstruction`, as SAE-Bench's documented
runs do): the SAE was trained without them.

The text is a `datasets.Dataset` of the caller's documents (column 'text'; held-out documents of
the training text: OpenWebText in the real setting, the embedded text otherwise), streamed by
SAE-Lens' `ActivationsStore` as SAE-Bench streams OpenWebText: documents concatenated with BOS
between them, every context starting with BOS, the document order shuffled with seed 42.
The reconstruction batches come first, the sparsity/variance batches follow on the next,
unseen contexts. `tokens_needed(config)` tells how much text that takes; too little is an error
rather than a silent second pass over the same text.

Sizes (`preset.eval_sizes`): prompts of context_length tokens per batch x batches.
  'sae_bench'   SAE-Bench's command-line defaults: 16 prompts x (10 reconstruction + 1
                sparsity/variance) batches of 128 tokens (22,528 tokens).
  'cpu'         4 prompts x (10 + 8) batches of 128 tokens (9,216 tokens, within the embedded
                run's 16,384 held-out tokens). Nearly all of its time is the reconstruction
                batches: three full forward passes each (with the 262k-token unembedding) and
                the softmaxes for the KL (times: README, "Benchmarks").
  'tiny'        2 prompts x (2 + 2) batches, for tests on the tiny Gemma-2 fixture.

The JSON is SAE-Bench's `CoreEvalOutput` written by its `save_single_eval_result` (with NaN
replaced by -1 as its `multiple_evals` does; the returned means leave NaN out instead). Besides
SAE-Bench's metrics, the means hold per-level figures of a two-level SAE (an SAE with `n_base`
and `n_concept`), read off SAE-Bench's own per-latent densities: `l0_base`, `l0_concept` (their
sum is SAE-Bench's `l0`) and `frac_alive_base`, `frac_alive_concept`; and
`explained_variance_centered` (see the first quirk below).

With SAE-Bench's default of one sparsity/variance batch (2,048 tokens), `frac_alive` counts a
latent as dead when it did not fire on those tokens: a lower bound, loose for wide SAEs.

SAE-Bench 0.6.0 quirks, recorded here because the numbers are SAE-Bench's:
  * `explained_variance` divides the residual by E||x||^2 - (E||x||^2 / d)^2 (the mean of
    squares where the mean belongs), not by the variance about the mean. When the residual
    stream's E||x||^2 / d exceeds d, as in Gemma-3-270M (||x|| ~ 3400, d = 640), the divisor is
    negative and the figure is just above 1 whatever the SAE (measured: 1.0002-1.001 for SAEs
    whose centred explained variance is 0.87-0.96). `explained_variance_centered` (ours, on the
    same tokens, as the training group's held-out figure) is the one to read;
    `explained_variance_legacy` is SAE-Bench's per-token ratio averaged over tokens.
  * losses and KL are computed and averaged in the model's dtype: with a bf16 model each
    token's loss is a bf16 number and the CE means are rounded to bf16 (e.g. 12.5 with
    ablation, 6.25 with the SAE, 4.25 without: bf16 steps of 0.0625 at 4-8 and 0.125 at 8-16),
    so `ce_loss_score` moves in steps of ~0.004-0.008. Ours, beside SAE-Bench's: the same
    losses from the same logits in fp32 (log-softmax and KL of each token in fp32, means in
    fp64, the same token mask), as `ce_loss_score_fp32`, `kl_div_score_fp32` and the
    `*_fp32` losses they are made of (`Fp32Losses`).

What does not depend on the SAE is computed once and cached (`ReconstructionReference`, under
`reference_root`, keyed by model, weights, dtype, hook and the batch's tokens). SAE-Bench's
`get_recons_loss` runs three full forward passes per reconstruction batch: clean, with the SAE
spliced in at the hook, and with the hook zero-ablated. Within this eval it is replaced by
`get_recons_loss_from_reference`, which computes the same metrics by the same formulas from
the residual stream at the hook (blocks 0..L run once per batch, ever) and the blocks above it:
a clean pass (its logits are the reference for the KL) and a pass with the SAE's reconstruction,
the zero-ablation CE loss and KL being read from the cache. A test holds it equal to SAE-Bench's
own function.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from sae_harness.data.language_model import LanguageModel
from sae_harness.data.presets import Preset
from sae_harness.errors import ConfigurationError, DataError
from sae_harness.evals.eval_logs import say
from sae_harness.evals.patching import patched
from sae_harness.evals.sae_bench_results import (
    SAE_BENCH_RELEASE,
    flat_means,
    sae_bench_version,
)
from sae_harness.records.cache_keys import keyed_folder
from sae_harness.records.run_directory import atomic_path

SHUFFLE_SEED = 42
"""Seed of the document shuffle (SAE-Bench's multiple_evals uses 42)."""


@dataclass(frozen=True)
class CoreSizes:
    """How much text the core metrics use."""

    batch_size_prompts: int
    """Contexts per batch."""
    n_eval_reconstruction_batches: int
    """Batches for the KL and CE-loss metrics (three full forward passes each)."""
    n_eval_sparsity_variance_batches: int
    """Batches for L0, L1, variance, norms and latent densities (forward up to the hook)."""


CORE_SIZES: dict[str, CoreSizes] = {
    "sae_bench": CoreSizes(16, 10, 1),
    "cpu": CoreSizes(4, 10, 8),
    "tiny": CoreSizes(2, 2, 2),
}


def core_config(preset: Preset):
    """SAE-Bench's CoreEvalConfig for the preset, every metric switched on."""
    from sae_bench.evals.core.eval_config import CoreEvalConfig

    if preset.eval_sizes not in CORE_SIZES:
        raise ConfigurationError(
            f"eval_sizes={preset.eval_sizes!r} is not one of {sorted(CORE_SIZES)} (see core.py)"
        )
    sizes = CORE_SIZES[preset.eval_sizes]
    return CoreEvalConfig(
        model_name=preset.model_name,
        llm_dtype=preset.model_dtype,
        batch_size_prompts=sizes.batch_size_prompts,
        n_eval_reconstruction_batches=sizes.n_eval_reconstruction_batches,
        n_eval_sparsity_variance_batches=sizes.n_eval_sparsity_variance_batches,
        dataset=preset.text_dataset,
        context_size=preset.context_length,
        compute_kl=True,
        compute_ce_loss=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
        compute_featurewise_weight_based_metrics=True,
        exclude_special_tokens_from_reconstruction=True,
    )


def tokens_needed(config) -> int:
    """Tokens of text (separators included) the core eval reads: every batch sees new text."""
    batches = config.n_eval_reconstruction_batches + config.n_eval_sparsity_variance_batches
    return batches * config.batch_size_prompts * config.context_size


def check_enough_text(documents: list[str], tokenizer, config, chunk: int = 256) -> None:
    """Fail unless the documents hold `tokens_needed(config)` tokens (one separator per document)."""
    need, have = tokens_needed(config), 0
    for start in range(0, len(documents), chunk):
        ids = tokenizer(documents[start:start + chunk], add_special_tokens=False)["input_ids"]
        have += sum(len(row) + 1 for row in ids)
        if have >= need:
            return
    raise DataError(
        f"core eval needs {need} tokens of held-out text and the {len(documents)} documents given "
        f"hold {have}; pass more documents or use smaller core sizes"
    )


def level_figures(sae, feature_density: list[float]) -> dict[str, float]:
    """L0 and fraction alive per level of a two-level SAE, from per-latent densities."""
    n_base, n_concept = getattr(sae, "n_base", None), getattr(sae, "n_concept", None)
    if n_base is None or n_concept is None or len(feature_density) != n_base + n_concept:
        return {}
    density = torch.tensor(feature_density, dtype=torch.float64)
    figures = {"l0_base": density[:n_base].sum().item(),
               "frac_alive_base": (density[:n_base] > 0).double().mean().item()}
    if n_concept:
        figures.update(l0_concept=density[n_base:].sum().item(),
                       frac_alive_concept=(density[n_base:] > 0).double().mean().item())
    return figures


def _recording_batches(store, batches: list[torch.Tensor]):
    """store.get_batch_tokens, keeping every token batch it hands out in `batches` (the last ones
    are the sparsity/variance batches)."""
    get_batch_tokens = store.get_batch_tokens

    def recording(*args, **kwargs):
        tokens = get_batch_tokens(*args, **kwargs)
        batches.append(tokens)
        return tokens

    return recording


@torch.no_grad()
def centered_explained_variance(sae, model, tokens: torch.Tensor, layer: int, ignore_tokens: set,
                                batch_size: int) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the non-special positions of `tokens`.

    The definition of the training group's held-out explained variance, on the tokens of
    SAE-Bench's sparsity/variance batches.
    """
    from sae_harness.data.language_model import residual_stream

    skip = torch.tensor(sorted(t for t in ignore_tokens if t is not None), device=tokens.device)
    xs, errors = [], 0.0
    for chunk in tokens.split(batch_size):
        x = residual_stream(model, chunk, layer)[~torch.isin(chunk, skip)].to(sae.device, torch.float32)
        errors += (x - sae.decode(sae.encode(x)).float()).pow(2).sum().item()
        xs.append(x)
    x = torch.cat(xs)
    return 1.0 - errors / (x - x.mean(0)).pow(2).sum().item()


# --------------------------------------------------------------------------------------------
# What does not depend on the SAE, computed once
# --------------------------------------------------------------------------------------------
REFERENCE_VERSION = 2
"""Bump when ReconstructionReference's contents change: part of its folder's key."""


KL_ROWS = 32
"""Tokens per chunk of the KL: its (tokens x vocabulary) temporaries then stay in the CPU's cache
instead of five passes over ~0.5 GB each per batch (the same per-row arithmetic)."""


def kl_divergence(original_logits: torch.Tensor, new_logits: torch.Tensor,
                  rows: int = KL_ROWS) -> torch.Tensor:
    """Per-token KL(original || new), as SAE-Bench 0.6.0's `get_recons_loss` computes it (softmax,
    then log of it, in the logits' dtype), `rows` tokens at a time."""
    original, new = original_logits.flatten(0, -2), new_logits.flatten(0, -2)
    kl = []
    for start in range(0, len(original), rows):
        original_probs = torch.nn.functional.softmax(original[start:start + rows], dim=-1)
        new_probs = torch.nn.functional.softmax(new[start:start + rows], dim=-1)
        kl.append((original_probs * (torch.log(original_probs) - torch.log(new_probs))).sum(dim=-1))
    return torch.cat(kl).view(original_logits.shape[:-1])


def ce_loss_fp32(logits: torch.Tensor, tokens: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """Per-token next-token CE loss, (B, T-1), as TransformerLens' `lm_cross_entropy_loss`
    (per_token, the same attention mask) but with the log-softmax in fp32, one context at a time."""
    losses = torch.stack([
        -row.float().log_softmax(-1)[:-1].gather(-1, row_tokens[1:, None])[:, 0]
        for row, row_tokens in zip(logits, tokens)])
    if attention_mask is not None:
        keep = torch.logical_and(attention_mask[:, :-1], attention_mask[:, 1:])
        losses = losses.masked_fill(~keep.bool(), 0.0)
    return losses


def in_fp32(computed: torch.Tensor, compute) -> torch.Tensor:
    """A per-token figure in fp32: `computed` (as SAE-Bench got it, in the logits' dtype) where
    the logits are fp32 already, else `compute()` (an fp32 model's losses are not computed twice)."""
    return computed if computed.dtype == torch.float32 else compute()


class Fp32Losses:
    """The reconstruction batches' per-token CE losses and KLs in fp32 (module docstring), kept
    as SAE-Bench's `get_downstream_reconstruction_metrics` keeps its own, and averaged over the
    same tokens into the same scores."""

    NAMES = ("ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation",
             "kl_div_with_sae", "kl_div_with_ablation")

    def __init__(self):
        self.batches: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] = []

    def add(self, tokens: torch.Tensor, values: dict[str, torch.Tensor]) -> None:
        self.batches.append((tokens, values))

    def means(self, ignore_tokens: set) -> dict[str, float]:
        """`<name>_fp32` for each of NAMES and `ce_loss_score_fp32`, `kl_div_score_fp32` ({}
        when no batch was recorded); the mask is SAE-Bench's (ignored tokens dropped; a
        per-token CE of length T-1 drops the last position's mask)."""
        if not self.batches:
            return {}
        kept: dict[str, list[torch.Tensor]] = {name: [] for name in self.NAMES}
        for tokens, values in self.batches:
            ignore = [token for token in ignore_tokens if token is not None]
            mask = (~torch.isin(tokens, torch.tensor(ignore, device=tokens.device)) if ignore
                    else torch.ones_like(tokens, dtype=torch.bool))
            for name, value in values.items():
                kept[name].append(value[mask[:, :value.shape[1]]])
        means = {f"{name}_fp32": torch.cat(values).double().mean().item()
                 for name, values in kept.items() if values}
        means["ce_loss_score_fp32"] = (
            (means["ce_loss_with_ablation_fp32"] - means["ce_loss_with_sae_fp32"])
            / (means["ce_loss_with_ablation_fp32"] - means["ce_loss_without_sae_fp32"]))
        means["kl_div_score_fp32"] = (
            (means["kl_div_with_ablation_fp32"] - means["kl_div_with_sae_fp32"])
            / means["kl_div_with_ablation_fp32"])
        return means


class ReconstructionReference:
    """Per batch of tokens: the residual stream at `blocks.{layer}.hook_resid_post`, the
    attention mask the model's forward would use, and the zero-ablation CE loss and KL.

    `folder` None keeps nothing on disk (every batch is computed afresh).
    """

    def __init__(self, model, layer: int, folder: Path | None):
        self.model, self.layer, self.folder = model, layer, folder
        self.hits = self.misses = 0
        self.fp32 = Fp32Losses()
        """The reconstruction batches' losses in fp32 (filled by get_recons_loss_from_reference)."""

    def _path(self, tokens: torch.Tensor) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.sha256(str(tuple(tokens.shape)).encode()
                                + tokens.cpu().numpy().tobytes()).hexdigest()[:24]
        return self.folder / f"{digest}.pt"

    def from_hook(self, resid: torch.Tensor, tokens: torch.Tensor, attention_mask):
        """(logits, per-token CE loss) of the blocks above the hook, from its residual stream."""
        return self.model(resid, start_at_layer=self.layer + 1, tokens=tokens, return_type="both",
                          loss_per_token=True, attention_mask=attention_mask)

    @torch.no_grad()
    def entry(self, tokens: torch.Tensor) -> dict[str, Any]:
        """The batch's cached entry; computed (and the clean pass's logits and loss returned
        with it, as 'clean') when it is not cached yet."""
        path = self._path(tokens)
        if path is not None and path.is_file():
            try:
                entry = torch.load(path, map_location=tokens.device)
                if torch.equal(entry["tokens"], tokens):
                    self.hits += 1
                    return entry
            except Exception:  # a torn or foreign file: computed again below
                pass
        self.misses += 1
        attention_mask = self.model.input_to_embed(tokens)[3]
        resid = self.model(tokens, stop_at_layer=self.layer + 1)
        clean_logits, clean_ce = self.from_hook(resid, tokens, attention_mask)
        ablation_logits, ablation_ce = self.from_hook(torch.zeros_like(resid), tokens, attention_mask)
        ablation_kl = kl_divergence(clean_logits, ablation_logits)
        entry = {"tokens": tokens, "resid": resid, "attention_mask": attention_mask,
                 "ce_loss_with_ablation": ablation_ce, "kl_div_with_ablation": ablation_kl,
                 "ce_loss_with_ablation_fp32": in_fp32(ablation_ce, lambda: ce_loss_fp32(
                     ablation_logits, tokens, attention_mask)),
                 "kl_div_with_ablation_fp32": in_fp32(ablation_kl, lambda: kl_divergence(
                     clean_logits.float(), ablation_logits.float()))}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                torch.save(entry, tmp)
        return {**entry, "clean": (clean_logits, clean_ce)}


def reference_folder(root: Path, lm: LanguageModel, hook_name: str) -> Path:
    """The folder of ReconstructionReference entries for exactly this model, dtype and hook."""
    key = {"model_name": lm.model.cfg.model_name, "weights_id": lm.weights_id,
           "dtype": str(lm.model.cfg.dtype).replace("torch.", ""), "hook_name": hook_name,
           "reference_version": REFERENCE_VERSION, "sae_bench": version("sae-bench"),
           "torch": torch.__version__}
    return keyed_folder(root, key)


@contextmanager
def unembedding_stored_transposed(model):
    """TransformerLens' Unembed copies W_U.T to a contiguous tensor in every forward (0.67 GB in
    fp32 for Gemma's 262k-token vocabulary, 20 forwards per core eval; its cost in
    docs/BENCHMARKS.md). Stored as the
    transpose of a contiguous (vocabulary, d) tensor, W_U.T is contiguous already and the copy
    costs nothing: the same values and the same product. The usual layout is restored after."""
    W_U = model.unembed.W_U
    W_U.data = W_U.data.T.contiguous().T
    try:
        yield
    finally:
        W_U.data = W_U.data.contiguous()


def get_recons_loss_from_reference(reference: ReconstructionReference, original):
    """A stand-in for SAE-Bench's `get_recons_loss` (same arguments and result) that reads the
    SAE-independent passes from `reference`; other hooks than resid_post go to `original`."""

    def get_recons_loss(sae, model, batch_tokens, activation_store, compute_kl, compute_ce_loss,
                        ignore_tokens=set(), exclude_special_tokens_from_reconstruction=False,
                        model_kwargs={}):
        if (model is not reference.model or model_kwargs
                or sae.cfg.hook_name != f"blocks.{reference.layer}.hook_resid_post"
                or getattr(sae.cfg, "hook_head_index", None) is not None):
            return original(sae, model, batch_tokens, activation_store, compute_kl, compute_ce_loss,
                            ignore_tokens, exclude_special_tokens_from_reconstruction, model_kwargs)
        entry = reference.entry(batch_tokens)
        resid, attention_mask = entry["resid"], entry["attention_mask"]
        if "clean" in entry:
            clean_logits, clean_ce = entry["clean"]
        else:
            clean_logits, clean_ce = reference.from_hook(resid, batch_tokens, attention_mask)
        if len(ignore_tokens) > 0 and exclude_special_tokens_from_reconstruction:
            mask = torch.logical_not(torch.any(
                torch.stack([batch_tokens == token for token in ignore_tokens], dim=0), dim=0))
        else:
            mask = torch.ones_like(batch_tokens, dtype=torch.bool)
        # SAE-Bench's standard_replacement_hook
        reconstructed = sae.decode(sae.encode(resid.to(sae.device))).to(resid.dtype)
        reconstructed = torch.where(mask[..., None], reconstructed.to(resid.device), resid)
        recons_logits, recons_ce = reference.from_hook(reconstructed, batch_tokens, attention_mask)
        metrics = {}
        if compute_kl:
            metrics["kl_div_with_sae"] = kl_divergence(clean_logits, recons_logits)
            metrics["kl_div_with_ablation"] = entry["kl_div_with_ablation"]
        if compute_ce_loss:
            metrics["ce_loss_with_sae"] = recons_ce
            metrics["ce_loss_without_sae"] = clean_ce
            metrics["ce_loss_with_ablation"] = entry["ce_loss_with_ablation"]
        if compute_kl and compute_ce_loss:  # the same losses in fp32 (Fp32Losses)
            reference.fp32.add(batch_tokens, {
                "ce_loss_with_sae": in_fp32(recons_ce, lambda: ce_loss_fp32(
                    recons_logits, batch_tokens, attention_mask)),
                "ce_loss_without_sae": in_fp32(clean_ce, lambda: ce_loss_fp32(
                    clean_logits, batch_tokens, attention_mask)),
                "ce_loss_with_ablation": entry["ce_loss_with_ablation_fp32"],
                "kl_div_with_sae": in_fp32(metrics["kl_div_with_sae"], lambda: kl_divergence(
                    clean_logits.float(), recons_logits.float())),
                "kl_div_with_ablation": entry["kl_div_with_ablation_fp32"]})
        return metrics

    return get_recons_loss


def run_core(sae, lm: LanguageModel, preset: Preset, documents: list[str], out_path: Path,
             reference_root: Path | None = None) -> dict[str, float]:
    """Run SAE-Bench's core metrics on `documents`, write its JSON to `out_path`, return means.
    The SAE-independent passes are cached under `reference_root` (None: not kept)."""
    import datasets
    import sae_bench.evals.core.main as core_main
    import sae_bench.sae_bench_utils.general_utils as general_utils
    from sae_bench.evals.core.main import (
        calculate_misc_metrics,
        replace_nans_with_negative_one,
        run_evals,
        save_single_eval_result,
    )
    from sae_bench.sae_bench_utils import get_eval_uuid, get_sae_lens_version
    from sae_lens.training.activations_store import ActivationsStore

    started = time.time()
    config = core_config(preset)
    documents = list(documents)
    check_enough_text(documents, lm.tokenizer, config)
    device = preset.device
    if sae.device != torch.device(device):
        sae.to(device)
    # as SAE-Bench's multiple_evals: decoder-norm check, cfg standardised (cfg.metadata etc.)
    sae_id, sae, _ = general_utils.load_and_format_sae(SAE_BENCH_RELEASE, sae, device)

    with warnings.catch_warnings():
        # both say nothing about an eval: one compares documents with a training-token budget,
        # the other recommends pre-tokenising
        warnings.filterwarnings("ignore", message="The training dataset contains fewer samples")
        warnings.filterwarnings("ignore", message="Dataset is not tokenized")
        store = ActivationsStore.from_sae(
            lm.model, sae, dataset=datasets.Dataset.from_dict({"text": documents}),
            context_size=config.context_size, store_batch_size_prompts=config.batch_size_prompts,
            device=device,
        )
    store.shuffle_input_dataset(seed=SHUFFLE_SEED)
    tokenizer = lm.tokenizer
    ignore_tokens = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id}
    say(f"[core] {tokens_needed(config)} tokens ({config.batch_size_prompts} x "
        f"{config.n_eval_reconstruction_batches}+{config.n_eval_sparsity_variance_batches} "
        f"batches of {config.context_size}) from {len(documents)} documents")

    batches: list[torch.Tensor] = []
    reference = ReconstructionReference(
        lm.model, sae.cfg.hook_layer,
        reference_folder(reference_root, lm, sae.cfg.hook_name) if reference_root else None)
    with patched(core_main, "get_recons_loss",
                 get_recons_loss_from_reference(reference, core_main.get_recons_loss)), \
            patched(store, "get_batch_tokens", _recording_batches(store, batches)), \
            unembedding_stored_transposed(lm.model):
        metrics, feature_metrics = run_evals(sae, store, lm.model, config, ignore_tokens=ignore_tokens)
    metrics["misc_metrics"] = calculate_misc_metrics(feature_metrics)
    result = {"eval_cfg": config, "metrics": metrics, "feature_metrics": feature_metrics,
              "sae_id": sae_id, "sae_set": SAE_BENCH_RELEASE}
    with atomic_path(out_path) as tmp:
        save_single_eval_result(replace_nans_with_negative_one(result), get_eval_uuid(),
                                get_sae_lens_version(), sae_bench_version(), str(tmp), sae)

    variance_tokens = torch.cat(batches[-config.n_eval_sparsity_variance_batches:])
    means = {**flat_means(metrics), **reference.fp32.means(ignore_tokens),
             **level_figures(sae, feature_metrics["feature_density"]),
             "explained_variance_centered": centered_explained_variance(
                 sae, lm.model, variance_tokens, sae.cfg.hook_layer, ignore_tokens,
                 config.batch_size_prompts)}
    say(f"[core] explained variance {means['explained_variance_centered']:.3f} (SAE-Bench's "
        f"formula: {means.get('explained_variance', float('nan')):.4f}), L0 "
        f"{means.get('l0', float('nan')):.1f}, CE loss score "
        f"{means.get('ce_loss_score', float('nan')):.3f} (losses in fp32: "
        f"{means.get('ce_loss_score_fp32', float('nan')):.4f}); {time.time() - started:.0f} s "
        f"(SAE-independent passes: {reference.hits} batches cached, {reference.misses} computed)")
    return means

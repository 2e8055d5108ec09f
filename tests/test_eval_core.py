"""SAE-Bench core metrics through our wrapper, on the tiny Gemma-2 and held-out local documents:
its own result schema, the tokens it measures on, special tokens left out, dead latents seen."""

import math
from dataclasses import asdict

import pytest
import torch

from saes import hierarchical_sae
from sae_harness.data.activations import special_token_ids
from sae_harness.errors import DataError
from sae_harness.evals import core as C
from sae_harness.evals.sae_bench_results import read_eval_output
from sae_harness.data.language_model import residual_stream
from sae_harness.data.text_sources import python_docstrings
from tiny_gemma2 import WIDTHS, tiny_real_preset

N_BASE, N_CONCEPT = 256, 64
EXPECTED = {  # SAE-Bench's metric names, flattened, plus the per-level and centred figures
    "kl_div_score", "kl_div_with_ablation", "kl_div_with_sae", "ce_loss_score",
    "ce_loss_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae", "explained_variance",
    "explained_variance_legacy", "mse", "cossim", "l2_norm_in", "l2_norm_out", "l2_ratio",
    "relative_reconstruction_bias", "l0", "l1", "total_tokens_eval_reconstruction",
    "total_tokens_eval_sparsity_variance", "average_max_encoder_cosine_sim",
    "average_max_decoder_cosine_sim", "frac_alive", "freq_over_1_percent", "freq_over_10_percent",
    "normalized_freq_over_1_percent", "normalized_freq_over_10_percent",
    "l0_base", "l0_concept", "frac_alive_base", "frac_alive_concept", "explained_variance_centered",
    "ce_loss_score_fp32", "kl_div_score_fp32", "ce_loss_with_sae_fp32", "ce_loss_without_sae_fp32",
    "ce_loss_with_ablation_fp32", "kl_div_with_sae_fp32", "kl_div_with_ablation_fp32",
}


def small_sae(preset, dead_base: int = 0):
    sae = hierarchical_sae(WIDTHS["d_model"], N_BASE, N_CONCEPT, 4, model_name=preset.model_name,
                            hook_layer=preset.hook_layer, context_size=preset.context_length,
                            init_scale_concept=1.0)
    with torch.no_grad():
        sae.b_enc1[:dead_base] = -1e6  # these base latents can never fire
    return sae


@pytest.fixture(scope="module")
def setting(tiny_gemma2, tiny_lm):
    preset = tiny_real_preset(tiny_gemma2["text"], context_length=16, eval_sizes="tiny")
    return preset, tiny_lm[1], python_docstrings()[:40]


@pytest.fixture(scope="module")
def core(setting, tmp_path_factory):
    preset, lm, docs = setting
    sae = small_sae(preset)
    out = tmp_path_factory.mktemp("core") / "core.json"
    return dict(sae=sae, out=out, means=C.run_core(sae, lm, preset, docs, out),
                setting_dtype=lm.model.cfg.dtype)


def test_result_json_is_sae_bench_core_output_with_every_metric(core):
    from sae_bench.evals.core.eval_output import CoreEvalOutput

    output = read_eval_output(core["out"], CoreEvalOutput)
    config = output.eval_config
    assert output.eval_type_id == "core"
    assert all(getattr(config, flag) for flag in (
        "compute_kl", "compute_ce_loss", "compute_l2_norms", "compute_sparsity_metrics",
        "compute_variance_metrics", "compute_featurewise_density_statistics",
        "compute_featurewise_weight_based_metrics", "exclude_special_tokens_from_reconstruction"))
    assert (config.batch_size_prompts, config.n_eval_reconstruction_batches,
            config.n_eval_sparsity_variance_batches, config.context_size) == (2, 2, 2, 16)
    assert [d.index for d in output.eval_result_details] == list(range(N_BASE + N_CONCEPT))
    assert output.sae_cfg_dict["dtype"] == "float32"
    # the returned means are the JSON's metrics, without the category prefix
    for category, metrics in asdict(output.eval_result_metrics).items():
        for name, value in metrics.items():
            assert core["means"][name] == pytest.approx(value, rel=1e-9), f"{category}/{name}"


def test_means_are_finite_floats_with_fractions_in_0_1(core):
    means = core["means"]
    assert set(means) == EXPECTED
    assert all(isinstance(v, float) and math.isfinite(v) for v in means.values())
    for name in ("frac_alive", "frac_alive_base", "frac_alive_concept", "freq_over_1_percent",
                 "cossim"):
        assert -1e-6 <= means[name] <= 1 + 1e-6, name
    assert means["total_tokens_eval_reconstruction"] == 2 * 2 * 16
    assert means["ce_loss_score"] == pytest.approx(
        (means["ce_loss_with_ablation"] - means["ce_loss_with_sae"])
        / (means["ce_loss_with_ablation"] - means["ce_loss_without_sae"]))
    assert core["sae"].dtype == torch.float32


@pytest.mark.filterwarnings("ignore::UserWarning")  # SAE-Lens' notes on datasets, as in run_core
def test_sparsity_metrics_are_measured_on_new_text_without_special_tokens(core, setting):
    """Rebuild SAE-Bench's token stream: the variance batches follow the reconstruction batches,
    and L0 / explained variance are over the positions that are not BOS, EOS or PAD."""
    import datasets
    from sae_lens.training.activations_store import ActivationsStore

    preset, lm, docs = setting
    sae, means = core["sae"], core["means"]
    store = ActivationsStore.from_sae(lm.model, sae, dataset=datasets.Dataset.from_dict({"text": docs}),
                                      context_size=16, store_batch_size_prompts=2, device="cpu")
    store.shuffle_input_dataset(seed=C.SHUFFLE_SEED)
    seen = torch.cat([store.get_batch_tokens(2) for _ in range(2)])  # reconstruction batches
    tokens = torch.cat([store.get_batch_tokens(2) for _ in range(2)])  # sparsity/variance batches
    assert not any(torch.equal(a, b) for a in seen for b in tokens)
    specials = torch.tensor(special_token_ids(lm.tokenizer))
    assert torch.isin(tokens, specials).any()  # the test means something: BOS in every context
    x = residual_stream(lm.model, tokens, preset.hook_layer)[~torch.isin(tokens, specials)]
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    assert means["l0"] == pytest.approx((z > 0).sum(-1).float().mean().item(), rel=1e-5)
    assert means["l0_base"] == pytest.approx((z[:, :N_BASE] > 0).sum(-1).float().mean().item(), rel=1e-5)
    centred = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert means["explained_variance_centered"] == pytest.approx(centred.item(), rel=1e-4)


def test_per_level_figures_add_up_to_sae_bench_totals(core):
    means = core["means"]
    assert means["l0_base"] + means["l0_concept"] == pytest.approx(means["l0"], rel=1e-5)
    alive = means["frac_alive_base"] * N_BASE + means["frac_alive_concept"] * N_CONCEPT
    assert alive / (N_BASE + N_CONCEPT) == pytest.approx(means["frac_alive"], rel=1e-6)
    assert means["l0_concept"] <= 4 + 1e-6  # TopK k = 4


def test_latents_that_never_fire_count_as_dead(setting, tmp_path):
    from sae_bench.evals.core.eval_output import CoreEvalOutput

    preset, lm, docs = setting
    means = C.run_core(small_sae(preset, dead_base=100), lm, preset, docs, tmp_path / "core.json")
    assert means["frac_alive_base"] <= (N_BASE - 100) / N_BASE
    assert means["frac_alive"] <= (N_BASE + N_CONCEPT - 100) / (N_BASE + N_CONCEPT)
    details = read_eval_output(tmp_path / "core.json", CoreEvalOutput).eval_result_details
    assert all(d.feature_density == 0 for d in details[:100])


def test_too_little_text_is_refused_before_any_model_work(setting, tmp_path):
    preset, lm, _ = setting
    with pytest.raises(DataError, match=r"needs 128 tokens .* 1 documents given hold \d+"):
        C.run_core(small_sae(preset), lm, preset, ["A short document."], tmp_path / "core.json")
    assert not (tmp_path / "core.json").exists()


def test_reconstruction_metrics_from_the_cached_reference_equal_sae_benchs_own(setting, tmp_path):
    """The stand-in for SAE-Bench's get_recons_loss (blocks below the hook run once, the
    zero-ablation pass cached) gives SAE-Bench's per-token numbers, computed and from the cache."""
    import sae_bench.evals.core.main as core_main

    preset, lm, docs = setting
    sae = small_sae(preset)
    ids = lm.tokenizer(docs[:2], add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([[lm.tokenizer.bos_token_id, *row[:15]] for row in ids])
    ignore = {lm.tokenizer.pad_token_id, lm.tokenizer.eos_token_id, lm.tokenizer.bos_token_id}
    expected = core_main.get_recons_loss(sae, lm.model, tokens, None, True, True, ignore, True)
    reference = C.ReconstructionReference(lm.model, preset.hook_layer, tmp_path)
    ours = C.get_recons_loss_from_reference(reference, core_main.get_recons_loss)
    computed = ours(sae, lm.model, tokens, None, True, True, ignore, True)
    cached = ours(sae, lm.model, tokens, None, True, True, ignore, True)
    assert (reference.misses, reference.hits) == (1, 1) and len(list(tmp_path.glob("*.pt"))) == 1
    assert set(computed) == set(cached) == set(expected) == {
        "kl_div_with_sae", "kl_div_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae",
        "ce_loss_with_ablation"}
    for name, value in expected.items():
        torch.testing.assert_close(computed[name], value, msg=name)
        torch.testing.assert_close(cached[name], value, msg=name)
    assert expected["kl_div_with_sae"].abs().sum() > 0  # the SAE changes the model's output


def test_a_rerun_reads_the_sae_independent_passes_and_gives_the_same_metrics(setting, core, tmp_path):
    preset, lm, docs = setting
    first = C.run_core(core["sae"], lm, preset, docs, tmp_path / "a.json", tmp_path / "reference")
    entries = list((tmp_path / "reference").rglob("*.pt"))
    assert len(entries) == 2  # one per reconstruction batch
    again = C.run_core(core["sae"], lm, preset, docs, tmp_path / "b.json", tmp_path / "reference")
    assert list((tmp_path / "reference").rglob("*.pt")) == entries
    for name, value in core["means"].items():
        assert first[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
        assert again[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name


def test_losses_in_fp32_equal_sae_benchs_on_an_fp32_model(core):
    """The tiny model runs in fp32, so SAE-Bench's losses are fp32 already: ours (fp32 per
    token, fp64 means, the same tokens) must give the same figures."""
    means = core["means"]
    assert core["setting_dtype"] == torch.float32
    for name in ("ce_loss_score", "kl_div_score", "ce_loss_with_sae", "ce_loss_without_sae",
                 "ce_loss_with_ablation", "kl_div_with_sae", "kl_div_with_ablation"):
        assert means[f"{name}_fp32"] == pytest.approx(means[name], rel=1e-4, abs=1e-6), name


def test_ce_loss_fp32_is_transformer_lens_loss_on_fp32_logits_and_not_on_bf16_rounding():
    from transformer_lens.utilities.lm_utils import lm_cross_entropy_loss

    generator = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(2, 9, 300, generator=generator)).bfloat16()
    tokens = torch.randint(0, 300, (2, 9), generator=generator)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # padding at the end of the second context
    ours = C.ce_loss_fp32(logits, tokens, mask)
    assert ours.dtype == torch.float32 and ours.shape == (2, 8)
    torch.testing.assert_close(ours, lm_cross_entropy_loss(logits.float(), tokens, mask, per_token=True))
    in_bf16 = lm_cross_entropy_loss(logits, tokens, mask, per_token=True)
    assert in_bf16.dtype == torch.bfloat16 and not torch.equal(in_bf16.float(), ours)
    assert (in_bf16.float() - ours).abs().max() < 0.1  # bf16 rounding of losses ~4-10


def test_fp32_means_use_sae_benchs_token_mask():
    """Tokens in ignore_tokens are left out (for the T-1 CE losses, by the first T-1 positions'
    mask, as SAE-Bench's get_downstream_reconstruction_metrics does)."""
    losses = C.Fp32Losses()
    tokens = torch.tensor([[2, 5, 6, 1]])  # 2 = BOS, 1 = EOS: ignored
    ce = {"ce_loss_with_sae": torch.tensor([[10.0, 3.0, 5.0]]),
          "ce_loss_without_sae": torch.tensor([[10.0, 1.0, 2.0]]),
          "ce_loss_with_ablation": torch.tensor([[10.0, 9.0, 8.0]]),
          "kl_div_with_sae": torch.tensor([[7.0, 0.5, 1.5, 7.0]]),
          "kl_div_with_ablation": torch.tensor([[7.0, 4.0, 6.0, 7.0]])}
    losses.add(tokens, ce)
    means = losses.means({2, 1, None})
    assert means["ce_loss_with_sae_fp32"] == 4.0 and means["ce_loss_without_sae_fp32"] == 1.5
    assert means["ce_loss_with_ablation_fp32"] == 8.5 and means["kl_div_with_sae_fp32"] == 1.0
    assert means["ce_loss_score_fp32"] == pytest.approx((8.5 - 4.0) / (8.5 - 1.5))
    assert means["kl_div_score_fp32"] == pytest.approx((5.0 - 1.0) / 5.0)
    assert C.Fp32Losses().means({1}) == {}


def test_a_figure_already_in_fp32_is_reused_and_one_in_bf16_recomputed():
    computed = torch.tensor([1.0, 2.0])
    assert C.in_fp32(computed, lambda: pytest.fail("an fp32 figure was computed again")) is computed
    assert C.in_fp32(computed.bfloat16(), lambda: computed * 3).tolist() == [3.0, 6.0]

"""The weight analysis on hand-built SAEs whose norms, sparsity and cosines are known."""

import json
import math

import pytest
import torch

from saes import hierarchical_sae
from sae_harness.evals.weights import sample_excluding, strongest_base_latents, weight_analysis


def make_sae(d=8, n_base=16, n_concept=4, k=1):
    return hierarchical_sae(d, n_base, n_concept, k, model_name="google/gemma-2-2b", hook_layer=1,
                             context_size=64)


def sparse_connectivity_sae():
    """W_enc2 (16, 4) with three nonzeros per column:
    col 0: 1, 1, 1          col 1: 2, -2, 2 (scale and sign do not matter)
    col 2: 1, 0.5, 0.005    col 3: 5e-3 three times (tiny, but relative to its own max: full)"""
    sae = make_sae()
    W = torch.zeros(16, 4)
    W[[0, 1, 2], 0] = 1.0
    W[[3, 4, 5], 1] = torch.tensor([2.0, -2.0, 2.0])
    W[[6, 7, 8], 2] = torch.tensor([1.0, 0.5, 0.005])
    W[[9, 10, 11], 3] = 5e-3
    with torch.no_grad():
        sae.W_enc2.copy_(W)
        # base encoder column i has norm i + 1
        sae.W_enc1.zero_()
        sae.W_enc1[torch.arange(16) % 8, torch.arange(16)] = torch.arange(1.0, 17.0)
    return sae


def test_norm_statistics_per_level():
    sae = sparse_connectivity_sae()
    means, details = weight_analysis(sae)
    assert means["enc_norm_mean_base"] == pytest.approx(8.5)
    assert means["enc_norm_min_base"] == pytest.approx(1.0)
    assert means["enc_norm_max_base"] == pytest.approx(16.0)
    # population std of 1..16
    assert means["enc_norm_std_base"] == pytest.approx(math.sqrt((16**2 - 1) / 12))
    # decoder rows are unit norm at initialisation
    for level in ("base", "concept"):
        assert means[f"dec_norm_mean_{level}"] == pytest.approx(1.0, abs=1e-6)
        assert means[f"dec_norm_std_{level}"] == pytest.approx(0.0, abs=1e-6)
    # concept encoder columns: norms of the W_enc2 columns
    expected = torch.tensor([math.sqrt(3), math.sqrt(12), math.sqrt(1.25 + 0.005**2),
                             math.sqrt(3) * 5e-3], dtype=torch.float64)
    assert means["enc_norm_mean_concept"] == pytest.approx(expected.mean().item(), rel=1e-6)
    assert means["enc_norm_max_concept"] == pytest.approx(math.sqrt(12), rel=1e-6)
    histogram = details["levels"]["base"]["encoder_column_norm"]["histogram"]
    assert sum(histogram["counts"]) == 16
    assert len(histogram["bin_edges"]) == len(histogram["counts"]) + 1
    assert histogram["bin_edges"][0] == pytest.approx(1.0)
    assert histogram["bin_edges"][-1] == pytest.approx(16.0)


def test_connectivity_sparsity_with_three_nonzeros_per_concept():
    means, details = weight_analysis(sparse_connectivity_sae())
    # 64 entries, 52 exactly zero; 0.005 (col 2) and 5e-3 x3 (col 3) lie between 1e-3 and 1e-2
    assert means["w_enc2_frac_abs_below_1e-4"] == pytest.approx(52 / 64)
    assert means["w_enc2_frac_abs_below_1e-3"] == pytest.approx(52 / 64)
    assert means["w_enc2_frac_abs_below_1e-2"] == pytest.approx(56 / 64)
    # relative to each column's max only col 2's 0.005 (= 0.005 of its max) is small
    assert means["w_enc2_frac_rel_below_1e-4"] == pytest.approx(52 / 64)
    assert means["w_enc2_frac_rel_below_1e-3"] == pytest.approx(52 / 64)
    assert means["w_enc2_frac_rel_below_1e-2"] == pytest.approx(53 / 64)
    # participation ratio: 3 for three equal magnitudes whatever their scale or sign
    effective = details["w_enc2"]["effective_base_per_concept"]["per_concept"]
    col2 = (1 + 0.5 + 0.005) ** 2 / (1 + 0.25 + 0.005**2)
    assert effective == pytest.approx([3.0, 3.0, col2, 3.0], rel=1e-6)
    assert means["effective_base_per_concept_mean"] == pytest.approx((9 + col2) / 4, rel=1e-6)
    assert means["effective_base_per_concept_median"] == pytest.approx(3.0, rel=1e-6)
    above = details["w_enc2"]["entries_above_1pct_of_max"]["per_concept"]
    assert above == [3, 3, 2, 3]
    assert means["w_enc2_entries_above_1pct_of_max_per_concept_mean"] == pytest.approx(2.75)
    assert details["w_enc2"]["zero_entries"] == 52 and details["w_enc2"]["zero_columns"] == 0


def test_all_zero_concept_column_reads_nothing():
    sae = sparse_connectivity_sae()
    with torch.no_grad():
        sae.W_enc2[:, 3] = 0
    means, details = weight_analysis(sae)
    assert details["w_enc2"]["effective_base_per_concept"]["per_concept"][3] == 0.0
    assert details["w_enc2"]["entries_above_1pct_of_max"]["per_concept"][3] == 0
    assert details["w_enc2"]["zero_columns"] == 1
    # 13 zeros in each of columns 0-2, and all of column 3
    assert means["w_enc2_frac_rel_below_1e-4"] == pytest.approx((3 * 13 + 16) / 64)
    assert all(math.isfinite(v) for v in means.values())


def test_concept_decoder_equal_to_its_strongest_base_decoder_has_cosine_one():
    sae = make_sae()
    with torch.no_grad():
        sae.W_dec1.copy_(torch.eye(8)[torch.arange(16) % 8])  # base i and i + 8 share a direction
        sae.W_enc2.zero_()
        for c in range(4):
            sae.W_enc2[2 * c, c] = 1.0
            sae.W_enc2[2 * c + 1, c] = -0.5  # second by |w|, orthogonal decoder
            sae.W_enc2[15, c] = 0.1  # third; decoder e_7 is orthogonal to every concept's
            sae.W_dec2[c] = sae.W_dec1[2 * c]
    means, details = weight_analysis(sae, top_m=2)
    assert means["concept_top1_base_decoder_cosine_mean"] == pytest.approx(1.0, abs=1e-6)
    assert means["concept_top2_base_decoder_cosine_mean"] == pytest.approx(0.5, abs=1e-6)
    rows = details["concept_base_decoder_cosine"]["per_concept"]
    assert [row["top_base"] for row in rows] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [row["top_weights"] for row in rows] == [[1.0, -0.5]] * 4
    # each concept direction e_2c is shared by exactly one base latent outside its top-2
    # (2c + 8), so the mean cosine with 2 random others lies in {0, 0.5}
    for row in rows:
        assert row["random_cosine_mean"] == pytest.approx(0.0, abs=1e-6) or \
            row["random_cosine_mean"] == pytest.approx(0.5, abs=1e-6)
    assert 0.0 <= means["concept_random_base_decoder_cosine_mean"] <= 0.5


def test_random_base_decoders_give_a_null_near_zero():
    torch.manual_seed(0)
    sae = make_sae(d=256, n_base=512, n_concept=128, k=4)
    means, _ = weight_analysis(sae, top_m=5)
    # random unit vectors in d = 256: each cosine has std 1/16; the mean of 640 has std 0.0025
    assert abs(means["concept_random_base_decoder_cosine_mean"]) < 0.0125


def test_baseline_without_concept_level_gets_base_figures_only():
    sae = make_sae(n_concept=0, k=0)
    means, details = weight_analysis(sae)
    assert set(means) == {f"{kind}_norm_{stat}_base" for kind in ("enc", "dec")
                          for stat in ("mean", "std", "min", "max")}
    assert all(math.isfinite(v) for v in means.values())
    assert set(details["levels"]) == {"base"} and "w_enc2" not in details


def test_details_are_plain_json():
    means, details = weight_analysis(sparse_connectivity_sae())
    assert json.loads(json.dumps(details, allow_nan=False))["levels"]["concept"]
    assert all(isinstance(v, float) and math.isfinite(v) for v in means.values())
    names = {"dec_norm_mean_base", "enc_norm_mean_concept", "w_enc2_frac_abs_below_1e-3",
             "w_enc2_frac_rel_below_1e-2", "effective_base_per_concept_mean",
             "concept_top1_base_decoder_cosine_mean", "concept_top5_base_decoder_cosine_mean",
             "concept_random_base_decoder_cosine_mean"}
    assert names <= set(means)


def test_strongest_base_latents_rank_by_magnitude():
    W = torch.tensor([[0.1, 0.0], [-3.0, 1.0], [2.0, -5.0], [0.0, 4.0]])
    assert strongest_base_latents(W, 2).tolist() == [[1, 2], [2, 3]]


def test_sample_excluding_draws_distinct_ids_from_the_pool_outside_each_row():
    pool = torch.arange(10, 60)
    exclude = torch.stack([torch.arange(10, 15), torch.arange(0, 5), torch.arange(50, 55)])
    draws = sample_excluding(pool, exclude, 40, torch.Generator().manual_seed(1), chunk=2)
    for row, excluded in zip(draws.tolist(), exclude.tolist()):
        assert len(set(row)) == 40
        assert set(row) <= set(pool.tolist()) - set(excluded)
    again = sample_excluding(pool, exclude, 40, torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)  # seeded, and independent of the chunking
    with pytest.raises(ValueError, match="cannot draw 46"):
        sample_excluding(pool, exclude, 46, torch.Generator().manual_seed(1))


def test_sample_excluding_is_uniform_over_the_allowed_ids():
    draws = sample_excluding(torch.arange(8), torch.tensor([[0, 1]] * 6000), 1,
                             torch.Generator().manual_seed(0))
    counts = torch.bincount(draws.flatten(), minlength=8)
    assert counts[:2].tolist() == [0, 0]
    # 6000 draws over 6 ids: 1000 each, binomial std ~29
    assert (counts[2:] - 1000).abs().max().item() < 150


def test_sparsity_figures_do_not_depend_on_the_column_chunking():
    from sae_harness.evals.weights import _connectivity_sparsity

    g = torch.Generator().manual_seed(0)
    W = torch.randn(40, 23, generator=g) * torch.logspace(-6, 0, 23)
    W = W * (torch.rand(40, 23, generator=g) < 0.3)
    whole, whole_means = _connectivity_sparsity(W, bins=10, chunk=1000)
    pieces, piece_means = _connectivity_sparsity(W, bins=10, chunk=4)
    assert piece_means == pytest.approx(whole_means, abs=1e-12)
    assert pieces["abs_log10_histogram"] == whole["abs_log10_histogram"]
    histogram = whole["abs_log10_histogram"]
    assert (sum(histogram["counts"]) + histogram["below_first_edge"] + histogram["above_last_edge"]
            == 40 * 23 - whole["zero_entries"])

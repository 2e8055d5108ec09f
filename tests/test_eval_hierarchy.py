"""Hierarchy consistency: information figures on firing patterns with known answers, then the
analysis of a small SAE whose concepts read known base latents."""

import math

import pytest
import torch

from saes import hierarchical_sae
from sae_harness.evals.hierarchy import (
    binary_entropy,
    hierarchy_consistency,
    information_from_counts,
    pairwise_firing_information,
)

LN2 = math.log(2)


def h(p: float) -> float:
    return 0.0 if p in (0.0, 1.0) else -p * math.log2(p) - (1 - p) * math.log2(1 - p)


def from_table(n11: int, n10: int, n01: int, n00: int):
    """Firing columns (T, 1) of c and b realising the 2x2 table (c, b)."""
    c = [1] * n11 + [1] * n10 + [0] * n01 + [0] * n00
    b = [1] * n11 + [0] * n10 + [1] * n01 + [0] * n00
    return torch.tensor(c).bool().unsqueeze(1), torch.tensor(b).bool().unsqueeze(1)


def single_pair(c, b):
    return pairwise_firing_information(c, b, torch.zeros(1, 1, dtype=torch.long))


# --- known answers -----------------------------------------------------------------------------
def test_hand_computed_symmetric_table():
    info = single_pair(*from_table(3, 1, 1, 3))
    # p(c) = p(b) = 1/2: I = 2 (3/8) log2(3/2) + 2 (1/8) log2(1/2) = 1 - h(1/4)
    assert info.mi.item() == pytest.approx(1 - h(0.25), abs=1e-12)
    assert info.mi.item() == pytest.approx(0.18872187554086717, abs=1e-12)
    assert info.p_b_given_c.item() == pytest.approx(0.75)
    assert info.h_b_given_c.item() == pytest.approx(h(0.25), abs=1e-12)
    assert info.nmi.item() == pytest.approx(1 - h(0.25), abs=1e-12)  # min(H) = 1 bit


def test_hand_computed_asymmetric_table():
    info = single_pair(*from_table(2, 2, 1, 5))  # T = 10, p(c) = 0.4, p(b) = 0.3
    mi = (0.2 * math.log2(0.2 / (0.4 * 0.3)) + 0.2 * math.log2(0.2 / (0.4 * 0.7))
          + 0.1 * math.log2(0.1 / (0.6 * 0.3)) + 0.5 * math.log2(0.5 / (0.6 * 0.7)))
    assert info.mi.item() == pytest.approx(mi, abs=1e-12)
    assert info.nmi.item() == pytest.approx(mi / min(h(0.4), h(0.3)), abs=1e-12)
    assert info.h_b_given_c.item() == pytest.approx(0.4 * h(0.5) + 0.6 * h(1 / 6), abs=1e-12)
    assert info.p_b_given_c.item() == pytest.approx(0.5)
    assert info.leakage.item() == pytest.approx(0.5)  # 2 of c's 4 firings without b
    assert info.concept_firings.item() == 4 and info.base_firings.item() == 3 and info.tokens == 10


def test_identical_patterns_share_all_information():
    g = torch.Generator().manual_seed(0)
    c = torch.rand(5000, 3, generator=g) < torch.tensor([0.02, 0.3, 0.5])
    info = pairwise_firing_information(c, c.clone(), torch.arange(3).unsqueeze(1))
    rates = c.double().mean(0)
    assert info.mi.squeeze(1).tolist() == pytest.approx([h(r) for r in rates.tolist()], abs=1e-12)
    assert info.nmi.squeeze(1).tolist() == pytest.approx([1.0] * 3, abs=1e-12)
    assert info.h_b_given_c.abs().max().item() < 1e-12
    assert info.p_b_given_c.squeeze(1).tolist() == [1.0] * 3
    assert info.leakage.tolist() == [0.0] * 3


def test_complementary_patterns_share_all_information():
    g = torch.Generator().manual_seed(1)
    c = torch.rand(5000, 1, generator=g) < 0.2
    info = single_pair(c, ~c)
    assert info.mi.item() == pytest.approx(h(c.double().mean().item()), abs=1e-12)
    assert info.nmi.item() == pytest.approx(1.0, abs=1e-12)
    assert info.h_b_given_c.item() == pytest.approx(0.0, abs=1e-12)
    assert info.p_b_given_c.item() == 0.0
    assert info.leakage.item() == 1.0


def test_concept_firing_only_with_its_base_latent():
    # c fires on tokens 0, 1; b on 0..4 of 10: c implies b, not the reverse
    c, b = from_table(2, 0, 3, 5)
    info = single_pair(c, b)
    assert info.p_b_given_c.item() == 1.0
    assert info.leakage.item() == 0.0
    assert info.h_b_given_c.item() == pytest.approx(0.8 * h(3 / 8), abs=1e-12)
    assert info.mi.item() == pytest.approx(h(0.5) - 0.8 * h(3 / 8), abs=1e-12)


def test_independent_patterns_have_mi_near_zero():
    # For independent c, b the plug-in G = 2 T ln2 I is chi^2 with 1 degree of freedom:
    # P(G > 30) ~ 4e-8 per pair, so 40 pairs stay below 30 / (2 T ln2) bits whatever the seed,
    # and their mean G is ~1 (mean of 40 chi^2_1 below 3 with probability > 1 - 1e-8).
    T = 100_000
    g = torch.Generator().manual_seed(2)
    c = torch.rand(T, 4, generator=g) < torch.tensor([0.01, 0.05, 0.2, 0.5])
    b = torch.rand(T, 10, generator=g) < torch.linspace(0.02, 0.6, 10)
    info = pairwise_firing_information(c, b, torch.arange(10).expand(4, 10))
    G = 2 * T * LN2 * info.mi
    assert G.max().item() < 30
    assert G.mean().item() < 3
    assert info.nmi.max().item() < 0.01
    # P(b|c) estimates P(b): binomial std at most sqrt(0.25 / 1000) = 0.016 for the rarest c
    assert (info.p_b_given_c - torch.linspace(0.02, 0.6, 10)).abs().max().item() < 0.08
    # leakage estimates prod_b (1 - p_b)
    none_fires = torch.prod(1 - torch.linspace(0.02, 0.6, 10)).item()
    assert info.leakage.tolist() == pytest.approx([none_fires] * 4, abs=0.01)


def test_leakage_counts_firings_with_none_of_the_base_latents():
    c = torch.tensor([1, 1, 1, 1, 0, 0]).bool().unsqueeze(1)
    b = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0], [1, 1], [0, 0]]).bool()
    info = pairwise_firing_information(c, b, torch.tensor([[0, 1]]))
    assert info.leakage.item() == pytest.approx(0.25)
    assert info.p_b_given_c.tolist() == [[0.5, 0.5]]


def test_constant_latents_give_zero_not_nan():
    mi, nmi, h_b_given_c, p = information_from_counts(
        100, torch.tensor([10, 10, 100]), torch.tensor([0, 100, 30]), torch.tensor([0, 10, 30]))
    assert mi.tolist() == pytest.approx([0, 0, 0], abs=1e-12)
    assert nmi.tolist() == [0.0, 0.0, 0.0]
    assert h_b_given_c.tolist() == pytest.approx([0, 0, h(0.3)], abs=1e-12)
    assert p.tolist() == pytest.approx([0.0, 1.0, 0.3])


def test_binary_entropy():
    assert binary_entropy(torch.tensor([0.0, 0.5, 1.0, 0.11], dtype=torch.float64)).tolist() == \
        pytest.approx([0.0, 1.0, 0.0, h(0.11)], abs=1e-12)


# --- an SAE whose concept c reads exactly base latent READS[c] ----------------------------
READS = [3, 7, 11, 15, 19, 23, 27, 31]


def wired_sae():
    sae = hierarchical_sae(16, 32, 8, 2, model_name="google/gemma-2-2b", hook_layer=1,
                            context_size=64, seed=0)
    with torch.no_grad():
        sae.W_enc2.zero_()
        sae.W_enc2[READS, range(8)] = 1.0
        sae.b_enc2.zero_()
    return sae


def activations(n=4000, seed=0):
    return torch.randn(n, 16, generator=torch.Generator().manual_seed(seed)) * 3


def test_sae_concepts_are_found_reading_their_base_latents():
    means, details = hierarchy_consistency(wired_sae(), activations(), top_m=5, batch_size=1000)
    assert means["alive_concepts"] == 8.0 and means["alive_concept_fraction"] == 1.0
    assert means["tokens"] == 4000.0
    for row in details["concepts"]:
        c = row["concept"]
        assert row["top_base"][0] == READS[c]
        assert row["top_weights"][0] == 1.0
        assert row["p_b_given_c"][0] == 1.0  # c fires only when z1[READS[c]] > 0
        assert row["leakage"] == 0.0
        # c implies b: I = H(b) - P(not c) H(b | not c) exactly
        p_c, p_b = row["firing_rate"], row["top_base_firing_rate"][0]
        expected = h(p_b) - (1 - p_c) * h((p_b - p_c) / (1 - p_c))
        assert row["mi"][0] == pytest.approx(expected, abs=1e-9)
        assert row["mi"][0] > 0.1
    assert details["top1"]["p_b_given_c_mean"] == 1.0
    assert details["top1"]["mi_mean"] > 10 * means["null_mi_mean"]
    assert means["leakage_mean"] == 0.0 and means["null_leakage_mean"] > 0.0
    assert means["p_b_given_c_mean"] > means["null_p_b_given_c_mean"]


def test_sae_analysis_equals_counts_from_the_forward_pass_and_ignores_batching():
    sae, x = wired_sae(), activations()
    means, details = hierarchy_consistency(sae, x, top_m=3, batch_size=4000)
    again, _ = hierarchy_consistency(sae, x, top_m=3, batch_size=333)
    assert again == pytest.approx(means, abs=1e-12)
    with torch.no_grad():
        out = sae.forward_levels(x)
    concept_fires = torch.zeros(len(x), 8, dtype=torch.bool)
    concept_fires.scatter_(1, out.z2_indices, out.z2_values > 0)
    top = torch.tensor([row["top_base"] for row in details["concepts"]])
    direct = pairwise_firing_information(concept_fires, out.z1 > 0, top)
    assert means["mi_mean"] == pytest.approx(direct.mi.mean().item(), abs=1e-12)
    assert means["p_b_given_c_mean"] == pytest.approx(direct.p_b_given_c.mean().item(), abs=1e-12)
    assert means["leakage_mean"] == pytest.approx(direct.leakage.mean().item(), abs=1e-12)


def test_sae_concepts_that_rarely_fire_are_not_alive():
    sae = wired_sae()
    with torch.no_grad():
        sae.b_enc1[READS[0]] = -1e6  # concept 0's only base latent never fires, nor does concept 0
    means, details = hierarchy_consistency(sae, activations(), min_firings=5)
    assert means["alive_concepts"] == 7.0
    assert means["alive_concept_fraction"] == pytest.approx(7 / 8)
    assert 0 not in [row["concept"] for row in details["concepts"]]
    assert details["parameters"]["alive_base"] == 31


def test_null_is_seeded():
    sae, x = wired_sae(), activations()
    first, _ = hierarchy_consistency(sae, x, seed=3)
    second, _ = hierarchy_consistency(sae, x, seed=3)
    other, _ = hierarchy_consistency(sae, x, seed=4)
    assert first == second
    assert first["null_mi_mean"] != other["null_mi_mean"]
    assert first["mi_mean"] == other["mi_mean"]


def test_sae_without_concept_level_is_refused():
    sae = hierarchical_sae(16, 32, 0, 0, model_name="google/gemma-2-2b", hook_layer=1,
                            context_size=64)
    with pytest.raises(ValueError, match="no concept level|has none"):
        hierarchy_consistency(sae, activations())


def test_sae_without_alive_concepts_is_refused():
    sae = wired_sae()
    with torch.no_grad():
        sae.b_enc2.fill_(-1e6)
    with pytest.raises(ValueError, match="no concept latent fires"):
        hierarchy_consistency(sae, activations())


def test_means_are_the_documented_finite_figures():
    means, _ = hierarchy_consistency(wired_sae(), activations(1000))
    names = ["mi_mean", "nmi_mean", "h_b_given_c_mean", "p_b_given_c_mean", "leakage_mean",
             "sibling_nmi_mean"]
    tree = ["tree_max_parents", "tree_top10_child_share", "tree_single_parent_fraction",
            "tree_distinct_children_fraction"]
    assert set(means) == {"alive_concepts", "alive_concept_fraction", "tokens", *names,
                          *[f"null_{n}" for n in names + tree], *tree, *[f"ideal_{n}" for n in tree]}
    assert all(isinstance(v, float) and math.isfinite(v) for v in means.values())


def test_tree_shape_tells_a_tree_from_hubs():
    """Every concept reading the same hub latents is no tree; disjoint children are one."""
    from sae_harness.evals.hierarchy import tree_shape

    alive = torch.arange(100)
    tree = torch.arange(50).reshape(10, 5)  # 10 concepts, disjoint children
    hubs = torch.tensor([[0, 1, 2, 3, 4 + i] for i in range(10)])  # four hubs shared by all
    as_tree, as_hubs = tree_shape(tree, alive, 5, 0), tree_shape(hubs, alive, 5, 0)
    assert as_tree["tree_max_parents"] == 1 and as_hubs["tree_max_parents"] == 10
    assert as_tree["tree_single_parent_fraction"] == pytest.approx(0.5)
    assert as_hubs["tree_single_parent_fraction"] == pytest.approx(0.1)
    assert as_tree["tree_top10_child_share"] == pytest.approx(10 / 50)
    assert as_hubs["tree_top10_child_share"] == pytest.approx((40 + 6) / 50)
    assert as_tree["ideal_tree_top10_child_share"] == pytest.approx(10 / 50)
    assert 1 < as_tree["null_tree_max_parents"] < 10

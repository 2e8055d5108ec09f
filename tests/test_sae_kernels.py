"""The SAE's fast products (sae_harness/sae_kernels.py) compute what plain autograd computes."""

import pytest
import torch
import torch.nn.functional as F

import experiment as E
from sae_harness.sae_kernels import SPARSE_DENSITY_MAX, ActiveLatents


def plain_forward(sae, x):
    """The SAE as written in the README, every product dense, gradients by autograd."""
    z1 = F.relu(torch.addmm(sae.b_enc1, x - sae.b_dec, sae.W_enc1))
    x_hat = torch.addmm(sae.b_dec, z1, sae.W_dec1)
    pre2 = F.relu(torch.addmm(sae.b_enc2, z1, sae.W_enc2))
    values, indices = pre2.topk(sae.concept_k, dim=-1, sorted=False)
    x_hat = x_hat + F.embedding_bag(indices, sae.W_dec2, mode="sum", per_sample_weights=values)
    return x_hat, z1, values


def gradients(sae, forward, x):
    sae.zero_grad()
    x_hat, z1, values = forward(sae, x)[:3]
    loss = (x - x_hat).pow(2).sum() + 0.3 * z1.sum() + 0.5 * values.sum()
    loss.backward()
    return x_hat.detach(), {name: p.grad.clone() for name, p in sae.named_parameters()}


@pytest.mark.parametrize("base_bias, sparse", [(0.0, False), (-4.0, True)])
def test_fast_products_give_the_plain_outputs_and_gradients(base_bias, sparse):
    torch.manual_seed(0)
    sae = E.HierarchicalSAE(64, 256, 64, 4, model_name="m", hook_layer=0, context_size=8,
                            init_scale_concept=1.0)
    with torch.no_grad():
        sae.b_enc1.fill_(base_bias)
        sae.b_dec.normal_()
    x = 3 * torch.randn(128, 64)
    density = (F.relu(torch.addmm(sae.b_enc1, x - sae.b_dec, sae.W_enc1)) > 0).float().mean()
    assert (density <= SPARSE_DENSITY_MAX) == sparse  # the case really takes the path it names
    assert (sae.forward_levels(x).base_active is not None) == sparse
    plain_x_hat, plain = gradients(sae, plain_forward, x)
    fast_x_hat, fast = gradients(sae, lambda s, v: tuple(s.forward_levels(v)), x)
    torch.testing.assert_close(fast_x_hat, plain_x_hat, rtol=1e-5, atol=1e-5)
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name  # every parameter gets a gradient worth comparing
        torch.testing.assert_close(fast[name], grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item(),
                                   msg=name)


def test_the_support_is_the_nonzero_entries_and_dense_batches_have_none():
    z = torch.zeros(300, 100)
    z[3, 7], z[3, 9], z[250, 0] = 1.0, 2.0, 3.0
    active = ActiveLatents.of(z)
    assert active.rows.tolist() == [3, 3, 250] and active.cols.tolist() == [7, 9, 0]
    assert active.offsets[:5].tolist() == [0, 0, 0, 0, 2] and active.offsets[-1].item() == 3
    assert ActiveLatents.of(torch.ones(300, 100)) is None


def test_an_sae_cast_to_bf16_encodes_through_the_sparse_products():
    """Absorption evaluates a copy cast to the model's dtype: the gathered products must take
    bf16 weights (they once raised 'weight ... per_sample_weights' type errors there)."""
    import experiment as E

    sae = E.HierarchicalSAE(32, 256, 64, 4, model_name="m", hook_layer=1, context_size=8,
                            init_scale_concept=1.0)
    with torch.no_grad():
        sae.b_enc1.fill_(-1.0)  # sparse z1 (~2% of latents): the gathered path
    x = torch.randn(16, 32)
    z1 = torch.relu(sae.forward_levels(x).z1)
    assert ActiveLatents.of(z1) is not None
    reference = sae.encode(x)
    low = sae.to(dtype=torch.bfloat16).encode(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), reference, atol=0.1, rtol=0.05)

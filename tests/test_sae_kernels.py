"""The SAE's fast products (sae_harness/training/sae_kernels.py) compute what plain autograd computes."""

import pytest
import torch
import torch.nn.functional as F

from saes import hierarchical_sae
from sae_harness.training.sae_kernels import SPARSE_DENSITY_MAX, ActiveLatents


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
    sae = hierarchical_sae(64, 256, 64, 4, model_name="m", hook_layer=0, context_size=8,
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

    sae = hierarchical_sae(32, 256, 64, 4, model_name="m", hook_layer=1, context_size=8,
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


@pytest.mark.parametrize("k, with_support", [(4, False), (4, True), (48, True), (48, False)])
@pytest.mark.parametrize("z_needs_grad", [True, False])  # False: AuxK reads z detached
def test_selected_preactivations_give_autograds_gradients(k, with_support, z_needs_grad):
    """W's gradient by the selected entries' z rows (k 4), by z's support (its nonzero entries
    reading rows of the (B, n) gradient) or by one matmul over the selected columns (k 48 of 64:
    what AuxK's entries over the dead latents take); zero gradient entries are left out on a CPU."""
    from sae_harness.training.sae_kernels import selected_preactivations

    torch.manual_seed(0)
    z = F.relu(torch.randn(128, 256) - 2.0)  # ~2% nonzero
    active = ActiveLatents.of(z) if with_support else None
    assert (active is not None) == with_support
    W0, b0 = torch.randn(256, 64), torch.randn(64)
    with torch.no_grad():
        pre = torch.addmm(b0, z, W0)
    indices = pre.topk(k, dim=-1, sorted=False).indices
    g = torch.randn(128, k)
    g[g < -0.5] = 0.0  # entries the ReLU after the selection would zero

    def grads(select):
        zz, W, b = z.clone().requires_grad_(z_needs_grad), W0.clone().requires_grad_(), b0.clone().requires_grad_()
        (select(zz, W, b) * g).sum().backward()
        return zz.grad, W.grad, b.grad

    fast = grads(lambda zz, W, b: selected_preactivations(zz, W, b, pre, indices, active))
    plain = grads(lambda zz, W, b: torch.addmm(b, zz, W).gather(1, indices))
    for name, f, p in zip(("z", "W", "b"), fast, plain):
        if p is None:
            assert f is None, name
        else:
            torch.testing.assert_close(f, p, rtol=1e-5, atol=1e-5, msg=name)

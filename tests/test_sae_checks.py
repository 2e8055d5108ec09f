"""sae_checks.check_sae on edited SAEs: the kernels where they fit, plain autograd where they do
not, a one-line refusal where saving or folding could not work."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import experiment as E
from sae_harness.errors import ConfigurationError
from sae_harness.training.sae_checks import check_sae
from sae_harness.training.sae_kernels import centred_encoder, kernel_mode

CFG = E.Config(n_base=256, concept_k=4, init_scale_concept=0.5)


def scaled_batch(d=32):
    return torch.randn(64, d, generator=torch.Generator().manual_seed(0)) * 1.5


class InputGain(E.HierarchicalSAE):
    """A learned gain on the input: centred_encoder gives x no gradient, so the gain gets none
    through the kernels."""

    SCALE_FREE = (*E.HierarchicalSAE.SCALE_FREE, "input_gain")

    def __init__(self, cfg, d_in):
        super().__init__(cfg, d_in)
        self.input_gain = nn.Parameter(torch.ones(d_in))

    def forward_levels(self, x):
        return super().forward_levels(x * self.input_gain)


class Gelu(E.HierarchicalSAE):
    def forward_levels(self, x):
        out = super().forward_levels(x)
        z1 = F.gelu(centred_encoder(x, self.b_dec, self.W_enc1, self.b_enc1))
        return out._replace(z1=z1, x_hat=z1 @ self.W_dec1 + self.b_dec)


def test_the_default_sae_trains_on_the_kernels_whose_gradients_equal_autograds_on_the_sparse_path():
    sae = E.HierarchicalSAE(CFG, 32)
    with torch.no_grad():
        sae.b_enc1.fill_(-1.0)  # sparse z1: the gathered paths in the exact mode too
    mode, note = check_sae(sae, scaled_batch(), E.HARNESS_READS)
    assert mode == "exact" and "equal plain autograd" in note
    x = scaled_batch()
    grads = {}
    for kernels in ("sparse", "plain"):
        with kernel_mode(kernels):
            out = sae.forward_levels(x)
            loss = out.x_hat.pow(2).sum() + out.z2_values.sum()
        grads[kernels] = torch.autograd.grad(loss, [sae.W_enc1, sae.W_enc2, sae.b_dec])
    for a, b in zip(grads["sparse"], grads["plain"]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_an_edit_the_kernels_do_not_fit_trains_on_plain_autograd():
    mode, note = check_sae(InputGain(CFG, 32), scaled_batch(), E.HARNESS_READS)
    assert mode == "plain" and "input_gain" in note


def test_a_forward_that_folding_cannot_serve_is_refused():
    with pytest.raises(ConfigurationError, match="not positively homogeneous"):
        check_sae(Gelu(CFG, 32), scaled_batch(), E.HARNESS_READS)


def test_an_unsaved_tensor_and_an_undeclared_buffer_are_refused():
    sae = E.HierarchicalSAE(CFG, 32)
    sae.running = torch.zeros(3)
    sae.register_buffer("threshold", torch.zeros(256))
    with pytest.raises(ConfigurationError, match="running is neither.*threshold is in neither"):
        check_sae(sae, scaled_batch(), E.HARNESS_READS)


def test_a_missing_attribute_the_harness_reads_is_named():
    sae = E.HierarchicalSAE(CFG, 32)
    del sae.W_dec2
    with pytest.raises(ConfigurationError, match="lacks W_dec2"):
        check_sae(sae, scaled_batch(), E.HARNESS_READS)

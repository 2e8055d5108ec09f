"""perf_ref.py plug-in: our hierarchical SAE trainer, timed beside dictionary_learning's and SAE-Lens'.

    PYTHONPATH=.:bench python bench/perf_ref.py --threads 1 \
        --trainers dl_top_k trainer_factory:hierarchical trainer_factory:hierarchical_fp32

`factory(d_in=, d_sae=, k=, device=)` builds the `tuned_cosine` variant with base width d_sae and
d_sae/4 concept latents. The concept level keeps the variant's own k (10): perf_ref's k is the
TopK of the other trainers. One `update(step, x)` is a full step as in experiment.py's training
loop: input scaling, forward, loss, backward, decoder-gradient projection, Adam, decoder
renormalisation and the dead-latent counters (the first batch sets the scale, as in training).

A fresh ReLU SAE fires on about half its latents (L0 ~ n_base/2), while a trained one fires on a
few percent (L0 60-170 of 2048 in the embedded runs); a TopK trainer's L0 is k from its first
step. The `*_trained` factories therefore time the step in its training state: before timing,
the SAE is trained for TRAINED_STEPS steps on perf_ref's synthetic pool with the schedule of a
TRAINED_STEPS + 100 step run (warm-up scaled as in experiment.py), once per shape and dtype,
and each rep continues from a copy of that state. The L0 reached is printed.

On perf_ref's synthetic pool a ReLU SAE with the variant's l1_base settles at L0 ~450-600 of
2048, while the TopK trainers it is compared with fire on k (64) latents, and the embedded runs'
base level on 50-170: a step's cost depends on that (the sparse products engage below 10%
density). `*_matched_l0` therefore takes the trained state and moves every base encoder bias
by one amount, the one that leaves k latents per token firing on a pool batch (then one step):
the same SAE and step at the TopK trainers' sparsity.
"""

import copy
import sys

import torch

import experiment as E
from sae_harness.hardware.precision import torch_dtype

TRAINED_STEPS = 150
_trained: dict[tuple, "HierarchicalStep"] = {}


class HierarchicalStep:
    def __init__(self, d_in: int, d_sae: int, device: str, matmul_dtype: str, batch: int = 4096,
                 total_steps: int | None = None):
        changes = dict(n_base=d_sae, matmul_dtype=matmul_dtype)
        if total_steps:
            changes.update(batch_size=batch, training_tokens=batch * total_steps)
        self.cfg = E.make_config("tuned_cosine", "real", overrides=changes)
        self.sae = E.HierarchicalSAE(self.cfg, d_in).to(device)
        self.trainer = None
        self.step_offset = 0

    def update(self, step, x):
        if self.trainer is None:  # the input scale comes from the first batch, as in training
            self.trainer = E.HierarchicalTrainer(self.sae, self.cfg, x, torch_dtype(self.cfg.matmul_dtype))
        return self.trainer.update(step + self.step_offset, x)


def hierarchical(d_in, d_sae, k, device):
    """Our trainer with bf16 matmuls (autocast), fp32 weights and Adam."""
    return HierarchicalStep(d_in, d_sae, device, "bfloat16")


def hierarchical_fp32(d_in, d_sae, k, device):
    """Our trainer with every matmul in fp32, like the reference trainers."""
    return HierarchicalStep(d_in, d_sae, device, "float32")


def _trained_step(d_in, d_sae, device, matmul_dtype, batch=4096, target_l0=None):
    key = (d_in, d_sae, device, matmul_dtype, batch, target_l0)
    if key not in _trained:
        from perf_ref import make_pool

        step = HierarchicalStep(d_in, d_sae, device, matmul_dtype, batch,
                                total_steps=TRAINED_STEPS + 100)
        pool = make_pool(8, batch, d_in, device)
        for i in range(TRAINED_STEPS):
            terms = step.update(i, pool[i % len(pool)])
        note = ""
        if target_l0:  # one threshold for every base latent: L0 = target_l0 on the first batch
            sae, x = step.sae, pool[0] / step.trainer.input_scale
            with torch.no_grad():
                pre = (x - sae.b_dec) @ sae.W_enc1 + sae.b_enc1
                shift = pre.flatten().kthvalue(pre.numel() - target_l0 * len(x)).values
                sae.b_enc1.sub_(shift)
            terms = step.update(TRAINED_STEPS, pool[0])
            note = f" then b_enc1 moved by - {shift.item():.3g}"
        step.step_offset = TRAINED_STEPS + bool(target_l0)
        print(f"[trainer_factory] {matmul_dtype}: trained {TRAINED_STEPS} steps{note}, L0 base "
              f"{terms.l0_base.item():.0f} of {d_sae}, concept {terms.l0_concept.item():.1f}",
              file=sys.stderr)
        _trained[key] = step
    return copy.deepcopy(_trained[key])


def hierarchical_trained(d_in, d_sae, k, device):
    """bf16 matmuls, timed in the training state (see the module docstring)."""
    return _trained_step(d_in, d_sae, device, "bfloat16")


def hierarchical_fp32_trained(d_in, d_sae, k, device):
    """fp32 matmuls, timed in the training state (see the module docstring)."""
    return _trained_step(d_in, d_sae, device, "float32")


def hierarchical_fp32_matched_l0(d_in, d_sae, k, device):
    """fp32 matmuls, timed in a training state whose base L0 is the TopK trainers' k."""
    return _trained_step(d_in, d_sae, device, "float32", target_l0=k)


def hierarchical_matched_l0(d_in, d_sae, k, device):
    """bf16 matmuls, timed in a training state whose base L0 is the TopK trainers' k."""
    return _trained_step(d_in, d_sae, device, "bfloat16", target_l0=k)

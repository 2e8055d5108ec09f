"""perf_ref.py plug-in: our hierarchical SAE trainer, timed beside dictionary_learning's and SAE-Lens'.

    PYTHONPATH=.:bench python bench/perf_ref.py --threads 1 \
        --trainers dl_top_k trainer_factory:hierarchical trainer_factory:hierarchical_fp32

`factory(d_in=, d_sae=, k=, device=)` builds the `tuned_cosine` variant with base width d_sae and
d_sae/4 concept latents. The concept level keeps the variant's own k (10): perf_ref's k is the
TopK of the other trainers. One `update(step, x)` is a full step as in experiment.py's training
loop: input scaling, forward, loss, backward, decoder-gradient projection, Adam, decoder
renormalisation and the dead-latent counters.
"""

from dataclasses import replace

import experiment as E


class HierarchicalStep:
    def __init__(self, d_in: int, d_sae: int, device: str, matmul_dtype: str):
        self.cfg = replace(E.make_config("tuned_cosine", "real"), d_sae_base=d_sae,
                           matmul_dtype=matmul_dtype)
        self.sae = E.HierarchicalSAE(d_in, d_sae, self.cfg.n_concept, self.cfg.concept_k,
                                     model_name="synthetic", hook_layer=0, context_size=128,
                                     init_scale_concept=self.cfg.init_scale_concept).to(device)
        self.trainer = None

    def update(self, step, x):
        if self.trainer is None:  # the input scale comes from the first batch, as in training
            self.scale = E.input_scale(x)
            self.trainer = E.HierarchicalTrainer(self.sae, self.cfg, E.StepSchedule.for_run(self.cfg),
                                                 E.input_std(x / self.scale))
        return self.trainer.update(step, x / self.scale).total


def hierarchical(d_in, d_sae, k, device):
    """Our trainer as experiment.py runs it: bf16 matmuls (autocast), fp32 weights and Adam."""
    return HierarchicalStep(d_in, d_sae, device, "bfloat16")


def hierarchical_fp32(d_in, d_sae, k, device):
    """Our trainer with every matmul in fp32, like the reference trainers."""
    return HierarchicalStep(d_in, d_sae, device, "float32")

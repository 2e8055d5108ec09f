"""What the harness holds an SAE to before training it: checked in seconds, before any model work.

    rehearse_training(make_trainer, d_in, device, batch_size)   # before the model loads
    kernels, note = check_sae(sae, scaled_batch, HARNESS_READS)  # by the trainer, on its first batch

`rehearse_training` builds the SAE and trainer as experiment.py does, on random rows of the
model's width (read from its config, no weights), takes two training steps and loads the
trainer's checkpoint state into a fresh one: check_sae and the trainer's state checks run there
too, so an edit that cannot train stops the run in seconds, not after the model has loaded
and the activations are collected (minutes in the real setting). It runs under a forked RNG, so
the run's own figures are those it would give without it.

An edit of experiment.py's SAE (a new activation, a BatchTopK concept level, a threshold, a new
bias or buffer) must either work with everything the harness does with the SAE or stop the run
at once with one line. So, on a copy of the SAE:

1. every attribute the harness reads (HARNESS_READS["SAE"]) is there;
2. every tensor is saved and resumed: a tensor attribute that is neither a parameter nor a
   buffer (it would be lost by save, load and checkpoints) is refused;
3. every parameter and buffer is declared as in input units (INPUT_SCALED: biases, thresholds)
   or scale-free (SCALE_FREE: weights), and folding the input scale into the SAE really makes
   it read raw activations: with every tensor perturbed, the folded SAE's output on 2x the
   input is 2x the unfolded output on the input (2 is a power of two, so the comparison is
   exact up to float summation order). A forward that is not positively homogeneous (a fixed
   threshold, a GELU) is refused, since its folded SAE would read raw activations wrongly;
4. the outputs through sae_kernels' exact sparse products equal plain autograd's (else a kernel
   is used outside its definition, e.g. selected_preactivations with a `pre` that is not
   z @ W + b: refused), and so do the gradients (the kernels on their gathered paths, whatever
   the density). Where only the gradients differ (a kernel's input that now needs a gradient it
   does not give, say), the run trains on plain autograd (slower, always right) and says so:
   `kernels` is 'exact' or 'plain'.
"""

from __future__ import annotations

import copy
import math
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from sae_harness.hardware import distributed
from sae_harness.training.contract import missing_sae_attributes
from sae_harness.errors import ConfigurationError, HarnessError
from sae_harness.training.sae_kernels import kernel_mode

CHECK_ROWS = 64
"""Rows of the first batch the checks run on."""
GRADIENT_TOLERANCE = 1e-4
"""Largest relative difference (to the largest entry of each gradient) between the kernels' and
plain autograd's gradients that counts as equal (fp32 sums in another order: ~1e-6)."""
FOLD_TOLERANCE = 1e-4
"""Largest relative difference between the folded SAE's output on 2x the input and 2x the
unfolded output."""


REHEARSAL_ROWS = 256
"""Random rows of each rehearsal step (fewer where the batch is smaller)."""
REHEARSAL_STEPS = 2


def rehearse_training(make_trainer: Callable[[torch.Tensor], object], d_in: int, device: str,
                      batch_size: int, source: str = "experiment.py") -> None:
    """REHEARSAL_STEPS steps of `make_trainer(first_batch)` (its `update(step, x)`) on random
    rows; an edit that fails them stops the run with one line naming where (module doc)."""
    started, rows = time.time(), min(REHEARSAL_ROWS, batch_size)
    devices = [torch.cuda.current_device()] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(0)
        x = torch.randn(rows, d_in)
        try:
            trainer = make_trainer(x)
            for step in range(REHEARSAL_STEPS):
                terms = trainer.update(step, x.to(device))
            trainer.check_state_names()  # what a checkpoint saves and a resumed run loads
            make_trainer(x).load_state_dict(trainer.state_dict())
        except HarnessError:
            raise
        except Exception as error:
            traceback.print_exc()
            raise ConfigurationError(
                f"two training steps on random rows (before the model loads) failed{_where(error, source)}: "
                f"{type(error).__name__}: {str(error).strip()[:300]}") from error
        total = float(torch.as_tensor(terms.total).detach())
        if not math.isfinite(total):
            raise ConfigurationError(f"two training steps on random rows (before the model loads) "
                                     f"gave a total loss of {total}; an edited loss or forward is "
                                     "not finite")
        del trainer
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    if distributed.current().is_main:
        print(f"[check] the SAE and trainer train: {REHEARSAL_STEPS} steps on {rows} random rows of "
              f"width {d_in} and a checkpoint round trip in {time.time() - started:.1f} s", flush=True)


def _where(error: BaseException, source: str) -> str:
    """' at <source> line N (in function)' for the deepest frame of the traceback in `source`."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename).name == source]
    return f" at {source} line {frames[-1].lineno} (in {frames[-1].name})" if frames else ""


def check_sae(sae, x: torch.Tensor, reads: dict) -> tuple[str, str]:
    """Checks 1-4 of the module docstring on `x` (scaled inputs, a few rows); returns the kernel
    mode to train with ('exact' or 'plain') and a line saying why."""
    missing_sae_attributes(reads, sae)
    _check_saved_state(sae)
    x = x[:CHECK_ROWS].detach().float().to(sae.W_enc1.device)
    trial = copy.deepcopy(sae).float()
    _perturb(trial)
    _check_fold(trial, x)
    difference, where = _kernel_gradient_difference(trial, x)
    if difference <= GRADIENT_TOLERANCE:
        return "exact", (f"sae_kernels' sparse products (gradients equal plain autograd's to "
                         f"{difference:.1e} on {len(x)} rows)")
    return "plain", (f"plain autograd: forward_levels' gradients through sae_kernels differ from "
                     f"autograd's by {difference:.1e} of the largest entry in {where} (an edit the "
                     "kernels do not fit); slower, but right")


def _check_saved_state(sae) -> None:
    names = [name for name, _ in sae.named_parameters()] + [name for name, _ in sae.named_buffers()]
    unsaved = [name for name, value in vars(sae).items() if isinstance(value, torch.Tensor)]
    declared = set(sae.INPUT_SCALED) | set(sae.SCALE_FREE)
    problems = [f"the tensor {name} is neither a parameter nor a buffer, so saving, loading and "
                "checkpoints would lose it (use nn.Parameter or self.register_buffer)" for name in unsaved]
    problems += [f"{name} is in neither INPUT_SCALED nor SCALE_FREE (say whether folding the "
                 "input scale must multiply it: biases and thresholds are in input units)"
                 for name in names if name not in declared]
    problems += [f"{name} is named in INPUT_SCALED/SCALE_FREE but is no parameter or buffer"
                 for name in sorted(declared - set(names))]
    if problems:
        raise ConfigurationError(f"{type(sae).__name__}: " + "; ".join(problems))


@torch.no_grad()
def _perturb(sae) -> None:
    """Move every parameter and buffer off its initial values (zeros hide a missing fold)."""
    generator = torch.Generator().manual_seed(0)
    for _, tensor in [*sae.named_parameters(), *sae.named_buffers()]:
        if tensor.is_floating_point() and tensor.numel():
            noise = torch.randn(tensor.shape, generator=generator).to(tensor.device)
            spread = tensor.float().std().item() if tensor.numel() > 1 else 0.0
            tensor.add_(noise * (0.1 * spread if spread > 0 else 0.1))


@torch.no_grad()
def _check_fold(sae, x: torch.Tensor) -> None:
    before = sae.forward_levels(x)
    folded = copy.deepcopy(sae)
    folded.fold_input_scale_(2.0)
    after = folded.forward_levels(2 * x)
    for name in ("x_hat", "z1"):
        expected, got = 2 * getattr(before, name).float(), getattr(after, name).float()
        difference = (got - expected).abs().max().item() / max(expected.abs().max().item(), 1e-12)
        if difference > FOLD_TOLERANCE:
            raise ConfigurationError(
                f"{type(sae).__name__}: after fold_input_scale_(2), {name} on 2x the input is not 2x "
                f"{name} on the input (relative difference {difference:.2g}): a parameter or buffer in "
                f"input units is missing from INPUT_SCALED ({', '.join(sae.INPUT_SCALED)}), or "
                "forward_levels is not positively homogeneous (a fixed threshold, a GELU), so the "
                "saved SAE could not read raw activations")


def _probe_loss(out) -> torch.Tensor:
    """A fixed random linear function of every differentiable tensor in the SAE's output."""
    generator, total = torch.Generator().manual_seed(1), 0.0
    for value in out:
        if isinstance(value, torch.Tensor) and value.requires_grad and value.is_floating_point():
            weights = torch.randn(value.shape, generator=generator).to(value.device)
            total = total + (value.float() * weights).sum()
    return total


def _kernel_gradient_difference(sae, x: torch.Tensor) -> tuple[float, str]:
    """The largest relative difference between the kernels' gradients (gathered paths) and plain
    autograd's over the SAE's parameters, and the parameter where it is."""
    params = dict(sae.named_parameters())
    grads, outputs = {}, {}
    for mode in ("sparse", "plain"):
        with kernel_mode(mode):
            out = sae.forward_levels(x)
            outputs[mode] = [v.detach().float() for v in out if isinstance(v, torch.Tensor)
                             and v.is_floating_point()]
            loss = _probe_loss(out)
        found = (torch.autograd.grad(loss, list(params.values()), allow_unused=True)
                 if isinstance(loss, torch.Tensor) else [None] * len(params))
        grads[mode] = [torch.zeros_like(p) if g is None else g for g, p in zip(found, params.values())]
    for kernels, plain in zip(outputs["sparse"], outputs["plain"]):
        if plain.numel() and (kernels.shape != plain.shape or (kernels - plain).abs().max().item()
                              > GRADIENT_TOLERANCE * max(plain.abs().max().item(), 1e-30)):
            raise ConfigurationError(
                f"{type(sae).__name__}.forward_levels gives other values through sae_kernels than "
                "through plain autograd: a kernel is used outside its definition (e.g. "
                "selected_preactivations with a pre that is not z @ W + b); compute that part "
                "with plain torch operations")
    worst, where = 0.0, "no parameter"
    for name, kernels, plain in zip(params, grads["sparse"], grads["plain"]):
        if not plain.numel():
            continue  # a level with no latents
        scale = max(plain.abs().max().item(), kernels.abs().max().item(), 1e-30)
        difference = (kernels - plain).abs().max().item() / scale
        if difference > worst:
            worst, where = difference, name
    return worst, where

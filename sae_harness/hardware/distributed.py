"""Several processes, one run: torchrun and torch.distributed, for more GPUs or machines.

    torchrun --standalone --nproc_per_node=N experiment.py --out_dir=run_i
    torchrun --nnodes=M --node_rank=R --master_addr=HOST --master_port=29500 \\
             --nproc_per_node=N experiment.py --out_dir=run_i          # on each of M machines

torchrun starts one process (rank) per device and sets RANK, WORLD_SIZE, LOCAL_RANK and the
rendezvous variables; without them a run is one process and every function here does nothing.
What each rank does (the rest of the harness asks `current()`):

* rank 0 alone prepares, locks and writes the run folder (config, status, log, checkpoints,
  SAE, results, notes) and runs the evaluations; the other ranks wait for it at a barrier;
* rank 0 collects the activation cache if it is missing, then every rank reads its own share
  of each global batch from it (`CachedBatches.shard`); the cache must therefore be on a
  filesystem every rank sees (a run whose activations do not fit in the cache is refused);
* the SAE trains under DistributedDataParallel: each rank's share gives gradients that DDP
  averages, so with equal shares every update is the single-process one up to the order of
  float additions; what the loss or the trainer takes from the whole batch (AuxK's error
  variance, the load-balancing firing rates and scale, the dead-latent counters, the logged
  figures) is all-reduced; the decoder constraint then acts on identical gradients everywhere;
* a stop (SIGINT/SIGTERM) on any rank stops every rank after the same step (`any_rank`); rank 0
  saves the checkpoint, and every rank resumes from it;
* a failure on any rank ends that rank with its one-line cause on stderr, and torchrun then
  stops the others.

Backend: NCCL on CUDA (each rank on cuda:LOCAL_RANK), gloo on CPU (tested: 2 processes give
the single-process weights within float tolerance, tests/test_distributed.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from sae_harness.errors import ConfigurationError

WAIT_HOURS = 12
"""How long a rank waits at a barrier (e.g. for rank 0's evaluations) before giving up."""


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_WORLD = World()
_COLLECTIVE_DEVICE = torch.device("cpu")
"""Where small collectives' tensors live: the rank's GPU under NCCL, the CPU under gloo."""


def world_from_environment(environ=os.environ) -> World:
    """The World torchrun's variables describe (one process without them)."""
    try:
        return World(int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1)),
                     int(environ.get("LOCAL_RANK", 0)))
    except ValueError as error:
        raise ConfigurationError(f"RANK / WORLD_SIZE / LOCAL_RANK are not integers: {error}") from error


def start(device: str, environ=os.environ) -> World:
    """Join the process group torchrun set up (no-op for one process); CUDA ranks take
    cuda:LOCAL_RANK as their device."""
    global _WORLD, _COLLECTIVE_DEVICE
    world = world_from_environment(environ)
    if world.distributed and not torch.distributed.is_initialized():
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(world.local_rank)
            _COLLECTIVE_DEVICE = torch.device("cuda", world.local_rank)
        torch.distributed.init_process_group("nccl" if cuda else "gloo",
                                             timeout=timedelta(hours=WAIT_HOURS))
    _WORLD = world
    return world


def stop() -> None:
    global _WORLD
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _WORLD = World()


def current() -> World:
    return _WORLD


def barrier() -> None:
    if _WORLD.distributed:
        torch.distributed.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (the tensor itself for one process)."""
    if _WORLD.distributed:
        torch.distributed.all_reduce(tensor, torch.distributed.ReduceOp.SUM)
    return tensor


def mean_over_ranks(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Each scalar's (tensor or number) mean over ranks (its value for one process), as floats,
    with one collective (and one device sync) for all of them."""
    if not values:
        return {}
    device = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), _COLLECTIVE_DEVICE)
    stacked = all_reduce_sum(torch.stack([torch.as_tensor(v, device=device).detach().float().reshape(())
                                          for v in values.values()]))
    return dict(zip(values, stacked.div(_WORLD.world_size).tolist()))


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if _WORLD.distributed:
        torch.distributed.all_reduce(tensor, torch.distributed.ReduceOp.MAX)
    return tensor


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on any."""
    if not _WORLD.distributed:
        return flag
    return bool(all_reduce_max(torch.tensor([float(flag)], device=_COLLECTIVE_DEVICE)).item())


def data_parallel(sae):
    """The SAE's `forward_levels`, under DistributedDataParallel when the run has several
    processes (gradients averaged over ranks during backward); the plain method otherwise."""
    if not _WORLD.distributed:
        return sae.forward_levels
    from torch.nn.parallel import DistributedDataParallel

    class Levels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sae = sae

        def forward(self, x):
            return self.sae.forward_levels(x)

    cuda = _COLLECTIVE_DEVICE.type == "cuda"
    # a vanilla SAE has empty concept parameters that nothing uses; buffers (TopK's selection
    # bias) are updated from all-reduced figures, identically on every rank
    return DistributedDataParallel(Levels(), device_ids=[_WORLD.local_rank] if cuda else None,
                                   find_unused_parameters=sae.n_concept == 0, broadcast_buffers=False)


def whole_batch_variance(error: torch.Tensor) -> torch.Tensor:
    """sum_i ||e_i - mean(e)||^2 / B over the whole batch (every rank's share)."""
    if not _WORLD.distributed:
        return (error - error.mean(0)).pow(2).sum(-1).mean()
    n = all_reduce_sum(error.new_tensor(float(len(error))))
    total = all_reduce_sum(error.pow(2).sum())
    centre = all_reduce_sum(error.sum(0))
    return (total - centre.pow(2).sum() / n) / n


def whole_batch_std(values: torch.Tensor) -> torch.Tensor:
    """torch.std of every entry over the whole batch (every rank's share)."""
    if not _WORLD.distributed:
        return values.std()
    n, total, squares = all_reduce_sum(torch.stack([values.new_tensor(float(values.numel())),
                                                    values.sum(), values.pow(2).sum()]))
    return ((squares - total * total / n) / (n - 1)).clamp_min(0).sqrt()


class WholeBatch:
    """Figures of the whole global batch, whatever share of it this rank holds: what a trainer
    asks of the batch goes through here, one method per figure. For one process each is the
    local figure; under torchrun each is all-reduced over the ranks."""

    def tokens(self, local_rows: int) -> int:
        """Tokens in the global batch."""
        return local_rows * _WORLD.world_size

    def fired(self, local_fired: torch.Tensor) -> torch.Tensor:
        """(n,) bool: which latents fired on any rank's share."""
        return all_reduce_max(local_fired.float()) > 0

    def counts(self, local_counts: torch.Tensor) -> torch.Tensor:
        """Per-latent counts summed over the ranks' shares."""
        return all_reduce_sum(local_counts)

    def variance(self, values: torch.Tensor) -> torch.Tensor:
        """sum_i ||v_i - mean(v)||^2 / B over the rows of the global batch."""
        return whole_batch_variance(values)

    def std(self, values: torch.Tensor) -> torch.Tensor:
        """torch.std of every entry of the global batch."""
        return whole_batch_std(values)

    def means(self, values: dict[str, torch.Tensor | float]) -> dict[str, float]:
        """Each scalar's mean over the ranks, as floats (one collective)."""
        return mean_over_ranks(values)


def from_main(obj):
    """Rank 0's `obj` on every rank."""
    if not _WORLD.distributed:
        return obj
    holder = [obj]
    torch.distributed.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """Every rank's `local` (the same shape on each), concatenated in rank order, on every rank."""
    if not _WORLD.distributed:
        return local
    parts = [torch.empty_like(local) for _ in range(_WORLD.world_size)]
    torch.distributed.all_gather(parts, local.contiguous())
    return torch.cat(parts)


def gather_objects(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank ([obj] for one process)."""
    if not _WORLD.distributed:
        return [obj]
    parts = [None] * _WORLD.world_size
    torch.distributed.all_gather_object(parts, obj)
    return parts

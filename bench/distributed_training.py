"""One process of the distributed-training benchmark (bench/run_benchmarks.py --only distributed).

    torchrun --standalone --nproc_per_node=N bench/distributed_training.py STEPS BATCH D_IN N_BASE DTYPE

Trains experiment.py's default SAE with its own trainer (DistributedDataParallel across the
torchrun processes, each on its share of every global batch of random activations) and prints,
on rank 0, one JSON line: global training tokens per second over the timed steps.
"""

import json
import sys
import time

import torch

import experiment as E  # noqa: E402
from sae_harness.hardware import distributed  # noqa: E402
from sae_harness.hardware.precision import torch_dtype  # noqa: E402

if len(sys.argv) != 6 or not all(a.isdigit() for a in sys.argv[1:5]):
    raise SystemExit(__doc__ + "\nerror: give STEPS BATCH D_IN N_BASE DTYPE")
steps, batch, d_in, n_base, dtype = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
world = distributed.start("cpu")
cfg = E.make_config("tuned_cosine", "embedded", overrides=dict(
    n_base=n_base, batch_size=batch, training_tokens=batch * (steps + 3), matmul_dtype=dtype))
torch.manual_seed(0)
sae = E.HierarchicalSAE(cfg, d_in)
x = torch.randn(batch, d_in, generator=torch.Generator().manual_seed(1))
trainer = E.HierarchicalTrainer(sae, cfg, x, torch_dtype(cfg.matmul_dtype))
share = batch // world.world_size
mine = x[world.rank * share:(world.rank + 1) * share]
for step in range(3):  # warm-up
    trainer.update(step, mine)
distributed.barrier()
started = time.perf_counter()
for step in range(3, 3 + steps):
    trainer.update(step, mine)
distributed.barrier()
seconds = time.perf_counter() - started
if world.is_main:
    print(json.dumps({"processes": world.world_size, "tokens_per_second": steps * batch / seconds,
                      "threads_per_process": torch.get_num_threads()}))
distributed.stop()

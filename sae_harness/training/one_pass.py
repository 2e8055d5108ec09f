"""Several SAEs trained from one pass of the language model over the text (streamed, no cache).

    jobs = [trainer_job("relu_l1_0.08", cfg, E.make_trainer, "cuda"), sae_lens_job(...), ...]
    heldout = train_in_one_pass(lm, preset, n_train, n_heldout, batch_size, jobs)
    sae, summary = jobs[0].result

The model runs once per context. Each (data seed, steps) gets its own shuffling buffers
(streaming.py), fed from the one pass by `SharedShare`, which hands every chunk of model rows to
each reader (up to the reader's own budget) and keeps it only until the last reader has it; jobs
of the same seed and length take the very same batch. So each SAE trains on the batches a
streamed run of its own (same seed, budget and shares) would get, and its weights equal that
run's up to float reduction order (tests/test_one_pass.py).

The jobs step in lockstep, in the main thread: at step t each stream's batch t is made once and
given to every job of that stream. Jobs may differ in length (SAE-Lens' trainer reads
NORM_BATCHES more; its stream then holds as many more rows). A job whose trainer owns its loop
(SAE-Lens' SAETrainer.fit) runs it in a thread that takes its batches from a queue of one
(`ThreadedTraining`). Under torchrun each rank computes its own share, as a streamed run does,
and experiment.py's trainers run under DDP; SAE-Lens' jobs are refused there.

Memory per extra SAE: its parameters and optimiser state; per extra (seed, steps), one shuffling
buffer per share (`stream_buffer_rows` rows). A one-pass build does not checkpoint: an
interrupted build starts the pass again (the finished points are not in it).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sae_harness.data.activations import iter_activations, iter_contexts, model_shares, streamed_heldout
from sae_harness.data.language_model import LanguageModel
from sae_harness.data.presets import Preset
from sae_harness.data.streaming import StreamingBatches
from sae_harness.data.text_sources import documents
from sae_harness.errors import ConfigurationError, HarnessError
from sae_harness.hardware import distributed


class SharedShare:
    """One share's model rows, read once and handed to several readers (one per data seed)."""

    def __init__(self, source, n_readers: int):
        self.source, self.share = source, source.share
        self._stream = source.read(0)
        self._chunks: list[torch.Tensor] = []
        self._first = 0
        """The index of _chunks[0] in the share's chunk sequence."""
        self._next = [0] * n_readers
        """The chunk each reader reads next."""

    def reader(self, index: int, limit: int) -> SharedReader:
        """Reader `index`, which stops after `limit` rows (a shorter job's own budget)."""
        return SharedReader(self, index, limit)

    def chunk(self, reader: int) -> torch.Tensor | None:
        """The reader's next chunk (None at the end of the share); the model runs only for the
        first reader to reach a chunk, and a chunk every reader has is dropped."""
        wanted = self._next[reader]
        while wanted >= self._first + len(self._chunks):
            chunk = next(self._stream, None)
            if chunk is None:
                return None
            self._chunks.append(chunk)
        self._next[reader] += 1
        chunk = self._chunks[wanted - self._first]
        while self._chunks and min(self._next) > self._first:
            self._chunks.pop(0)
            self._first += 1
        return chunk

    @property
    def chunks_held(self) -> int:
        return len(self._chunks)


@dataclass
class SharedReader:
    """What a ShareBuffer reads: its owner's chunks from the start of the share, up to `limit` rows."""

    owner: SharedShare
    index: int
    limit: int

    @property
    def share(self) -> int:
        return self.owner.share

    def read(self, start_row: int) -> Iterator[torch.Tensor]:
        if start_row:
            raise ConfigurationError("a one-pass training does not resume mid-stream")
        have = 0
        while have < self.limit and (chunk := self.owner.chunk(self.index)) is not None:
            chunk = chunk[:self.limit - have]
            have += len(chunk)
            yield chunk

    def fetch(self, ids: torch.Tensor) -> torch.Tensor:
        raise ConfigurationError("a one-pass training does not resume from a checkpoint")


@dataclass
class Job:
    """One SAE of the pass. `start(first_batch)` builds it, `step(step, x)` trains one batch,
    `finish()` returns what the caller keeps (the trained SAE and its figures)."""

    name: str
    seed: int
    steps: int
    start: object
    step: object
    finish: object
    result: object = field(default=None, init=False)
    """What `finish()` returned, once the pass is over."""


class ThreadedTraining:
    """A trainer that owns its loop (it pulls batches from an iterator, as SAE-Lens' SAETrainer
    does) driven one batch at a time: `train(batches)` runs in a thread, `give(x)` hands it the
    next batch and waits until it has taken it, `result()` waits for the end."""

    def __init__(self, train, name: str):
        self.name = name
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._result, self._error = None, None
        self._waiting = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(train,), daemon=True, name=name)
        self._thread.start()
        # wait until the trainer asks for its first batch: what it built before (its random
        # initialisation) used torch's global generator alone
        while not self._waiting.wait(0.1):
            if not self._thread.is_alive():
                break

    def _batches(self) -> Iterator[torch.Tensor]:
        self._waiting.set()
        while (x := self._queue.get()) is not None:
            yield x

    def _run(self, train) -> None:
        try:
            self._result = train(self._batches())
        except BaseException as error:  # reported by give() / result() in the main thread
            self._error = error

    def give(self, x: torch.Tensor) -> None:
        while True:
            if self._error is not None or not self._thread.is_alive():
                raise HarnessError(f"{self.name} stopped during the one-pass training: {self._error!r}")
            try:
                self._queue.put(x, timeout=1.0)
                return
            except queue.Full:
                continue

    def result(self):
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise HarnessError(f"{self.name} failed in the one-pass training: {self._error!r}") from self._error
        return self._result


def train_in_one_pass(lm: LanguageModel, preset: Preset, n_train: int, n_heldout: int,
                      batch_size: int, jobs: list[Job], buffer_rows: int = 1 << 20,
                      shares: int = 1) -> torch.Tensor:
    """Train every job from one pass of the model; returns the held-out rows (raw scale, float32;
    rank 0's, empty elsewhere). Each job's `result` is set to what its `finish()` returns."""
    chunks = iter_activations(lm, iter_contexts(documents(preset, seed=0), lm.tokenizer, preset.context_length),
                              preset.hook_layer, preset.llm_batch_size, preset.device)
    # one stream per (seed, steps): the batches of a run of that seed and budget alone
    keys = sorted({(job.seed, job.steps) for job in jobs})
    longest = max(steps for _, steps in keys)
    limits = {key: max(n_train, key[1] * batch_size) // shares for key in keys}
    shared = [SharedShare(source, len(keys))
              for source in model_shares(lm, preset, n_heldout, shares, max(limits.values()))]
    heldout = streamed_heldout(lm, chunks, n_heldout)
    streams = {key: StreamingBatches([s.reader(i, limits[key]) for s in shared], shares, buffer_rows,
                                     batch_size, key[0], preset.device) for i, key in enumerate(keys)}
    for job in jobs:
        job.start(streams[job.seed, job.steps].first_batch())
    iterators = {key: streams[key].iterate(0, key[1]) for key in keys}
    groups = {key: [job for job in jobs if (job.seed, job.steps) == key] for key in keys}
    for step in range(longest):
        for key in keys:
            if step < key[1]:
                x = next(iterators[key])
                for job in groups[key]:
                    job.step(step, x)
    for job in jobs:
        job.result = job.finish()
    return heldout


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------
def trainer_job(name: str, cfg, make_trainer, device: str, matmul_dtype=torch.float32) -> Job:
    """experiment.py's trainer for `cfg` (`make_trainer(cfg, first_batch, device, dtype)`) as a
    job, built and stepped as experiment.train_sae does; its result is (SAE, the training figures
    train_sae's summary holds but the seconds)."""
    held: dict = {}

    def start(first_batch):
        torch.manual_seed(cfg.seed)
        held["trainer"] = make_trainer(cfg, first_batch, device, matmul_dtype)

    def step(step: int, x):
        terms = held["trainer"].update(step, x.to(device, non_blocking=True))
        if step == cfg.total_steps - 1:
            held["values"] = held["trainer"].log_values(step, terms)

    def finish():
        trainer, values = held["trainer"], held["values"]
        trainer.sae.fold_input_scale_(trainer.input_scale)
        trainer.sae.eval()
        return trainer.sae, {"final_loss": values["total"], "final_reconstruction_loss": values["reconstruction"],
                             "steps": float(cfg.total_steps), "tokens": float(cfg.total_steps * cfg.batch_size),
                             "resumed_at_step": 0.0, **trainer.values(),
                             "plain_autograd": float(trainer.kernels == "plain")}

    return Job(name, cfg.seed, cfg.total_steps, start, step, finish)


def sae_lens_job(name: str, family: str, k: int, d_in: int, cfg, work_dir: Path,
                 matryoshka_widths: list[int] | None = None) -> Job:
    """SAE-Lens' trainer for one TopK or Matryoshka SAE (frontier.train_sae_lens) as a job, in a
    thread (SAETrainer.fit owns its loop); its result is the inference SAE. One process only:
    SAE-Lens' trainer knows nothing of the other ranks' rows."""
    from sae_harness.records.frontier import NORM_BATCHES, train_sae_lens

    if distributed.current().distributed:
        raise ConfigurationError(f"{name}: SAE-Lens' trainer runs in one process only; build the "
                                 "frontier's SAE-Lens points without torchrun")

    held: dict = {}

    def train(batches):
        return train_sae_lens(family, k, d_in, cfg.n_base, batches, cfg.total_steps, cfg.batch_size,
                              cfg.lr, cfg.seed, work_dir, matryoshka_widths)

    def start(first_batch):
        held["thread"] = ThreadedTraining(train, name)

    def step(step: int, x):
        held["thread"].give(x.clone())  # its own copy: SAE-Lens may scale a batch in place

    return Job(name, cfg.seed, cfg.total_steps + NORM_BATCHES, start, step, lambda: held["thread"].result())

"""What surrounds a training loop: resume, checkpoints, the log, progress, divergence and stops.

    session = TrainingSession(run, cfg, trainer, total_steps)
    for step, x in session.batches(data.train):
        terms = trainer.update(step, x)
        session.step_done(step, terms)
    summary = session.summary()

The trainer owns every piece of state the next step depends on (`state_dict` /
`load_state_dict`, from its STATE and VALUES names via TrainerState: SAE, optimiser, counters,
input scale) and says what a log line holds
(`log_values(step, terms)`); the session saves that state in a checkpoint every
`cfg.checkpoint_every_steps` steps or `cfg.checkpoint_every_minutes`, and when SIGINT or SIGTERM
asks it to stop, then raises TrainingInterrupted. A run started again with the same configuration
resumes from the checkpoint. From a cache, batch `step` depends only on (seed, step), and torch's
random state is saved too, so the weights come out bitwise those of an uninterrupted run. A
streamed source's state (each share's buffer, text position and generator; gathered from every
rank) is saved as well, and the resumed run trains on the uninterrupted run's batches, their
activations recomputed (streaming.py says what that equality means).

Log lines are written (and the device synchronised) every `cfg.log_every` steps, at the last
step and before a stop. A non-finite value in a log line stops training with the step named,
keeping the last good checkpoint.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import torch
from tqdm import tqdm

from sae_harness.hardware import distributed
from sae_harness.training.checkpoint import Checkpoint, GracefulStop, TrainingInterrupted
from sae_harness.errors import ConfigurationError, HarnessError
from sae_harness.records.run_directory import (CHECKPOINT, TRAINING_LOG, RunDirectory, TrainingLog,
                                               current_config_names)


class TrainerState:
    """A trainer's checkpointed state, by name: STATE names attributes with their own
    `state_dict` / `load_state_dict` (the SAE, the optimiser, counters), VALUES plain ones (floats).
    A checkpoint that lacks any of them (another version of the trainer wrote it) is refused, and
    so is a trainer holding a tensor or a stateful object (one with `state_dict`) that STATE does
    not name: a checkpoint would lose it, and a resumed run would differ."""

    STATE: tuple[str, ...] = ()
    VALUES: tuple[str, ...] = ()

    def check_state_names(self) -> None:
        """ConfigurationError for a name in STATE/VALUES the trainer lacks, or a tensor or
        stateful attribute that STATE leaves out (DistributedDataParallel's wrapper of the SAE,
        rebuilt at every start, is not state)."""
        from torch.nn.parallel import DistributedDataParallel

        problems = [f"{name} is named in STATE/VALUES but the trainer has no such attribute"
                    for name in (*self.STATE, *self.VALUES) if not hasattr(self, name)]
        problems += [f"{name} holds state ({type(value).__name__}) that STATE does not name, so a "
                     "checkpoint would lose it: add it to STATE" for name, value in vars(self).items()
                     if name not in self.STATE and not isinstance(value, DistributedDataParallel)
                     and (isinstance(value, torch.Tensor) or hasattr(value, "state_dict"))]
        if problems:
            raise ConfigurationError(f"{type(self).__name__}: " + "; ".join(problems))

    def state_dict(self) -> dict:
        return {**{name: getattr(self, name).state_dict() for name in self.STATE},
                **{name: getattr(self, name) for name in self.VALUES}}

    def load_state_dict(self, state: dict) -> None:
        if missing := [name for name in (*self.STATE, *self.VALUES) if name not in state]:
            raise ConfigurationError(f"the checkpoint lacks {missing} (another version of the "
                                     "trainer wrote it); set EXPERIMENT_OVERWRITE=1 to start over")
        for name in self.STATE:
            getattr(self, name).load_state_dict(state[name])
        for name in self.VALUES:
            setattr(self, name, state[name])

    def values(self) -> dict:
        """The VALUES (for the run's training summary)."""
        return {name: getattr(self, name) for name in self.VALUES}


class TrainingSession:
    """One training run's bookkeeping, around the experiment's own loop."""

    def __init__(self, run: RunDirectory, cfg, trainer, total_steps: int, is_writer: bool = True):
        self.run, self.cfg, self.trainer, self.total_steps = run, cfg, trainer, total_steps
        self.is_writer = is_writer
        """False on the ranks of a distributed run that do not write files (all but rank 0)."""
        trainer.check_state_names()
        self.checkpoint = Checkpoint(run.file(CHECKPOINT))
        self.start_step, self.seconds_before = 0, 0.0
        self.stream_state: list[dict] | None = None
        """The streamed shares' states at start_step (streaming.py), from the checkpoint."""
        state = self.checkpoint.load()
        if state is not None:
            if current_config_names(state["config"]) != asdict(cfg):
                raise ConfigurationError(
                    f"{run.path} holds an unfinished run with another configuration; use a new "
                    "--out_dir or set EXPERIMENT_OVERWRITE=1 to start it over")
            trainer.load_state_dict(state["trainer"])
            torch.set_rng_state(state["torch_rng"])
            self.start_step, self.seconds_before = state["step"], state["seconds"]
            self.stream_state = state.get("stream")
            print(f"[train] resuming from the checkpoint at step {self.start_step} of {total_steps}")
        self.log = TrainingLog(run.file(TRAINING_LOG), truncate_after_step=self.start_step if state else None) \
            if is_writer else None
        self.values: dict[str, float] = {}
        self._warned: set[str] = set()
        self._stop: GracefulStop | None = None
        self._progress: tqdm | None = None

    # --- the loop ------------------------------------------------------------------------------
    def batches(self, source) -> Iterator[tuple[int, torch.Tensor]]:
        """(step, batch) from `start_step` to the last step, with SIGINT/SIGTERM caught."""
        cfg = self.cfg
        self.started = self.last_saved = time.time()
        self.steps_since_save = 0
        self._progress = tqdm(total=self.total_steps * cfg.batch_size, unit="tok", unit_scale=True,
                              initial=self.start_step * cfg.batch_size, desc="train",
                              dynamic_ncols=True, disable=not self.is_writer)
        self.source = source
        with GracefulStop() as self._stop:
            batches = (source.iterate(self.start_step, self.total_steps) if self.stream_state is None
                       else source.iterate(self.start_step, self.total_steps, resume=self.stream_state))
            yield from zip(range(self.start_step, self.total_steps), batches)
        self._progress.close()
        self.finished = time.time()

    def step_done(self, step: int, terms) -> None:
        """After `trainer.update(step, ...)`: log, warn, checkpoint and stop when due."""
        cfg, stop = self.cfg, self._stop
        self._progress.update(cfg.batch_size)
        self.steps_since_save += 1
        last = step == self.total_steps - 1
        # under torchrun every rank stops after the same step, whichever rank got the signal
        if distributed.any_rank(stop.requested) and not stop.requested:
            stop.signal_number = signal.SIGTERM  # another rank was asked to stop
        if not (step % cfg.log_every == 0 or last or stop.requested):
            return
        values = self.trainer.log_values(step, terms)
        if not all(math.isfinite(v) for v in values.values()):
            raise HarnessError(
                f"training diverged at step {step}: non-finite values "
                f"{ {k: round(v, 6) for k, v in values.items() if not math.isfinite(v)} }; the last "
                "good checkpoint is kept; lower lr or the penalties in experiment.py")
        self.values = values
        if self.log is not None:
            self.log.write({"step": step, "tokens": (step + 1) * cfg.batch_size, **values,
                            "seconds": self.seconds_before + time.time() - self.started})
        self._progress.set_postfix(loss=f"{values['total']:.4f}", rec=f"{values['reconstruction']:.4f}",
                                   l0=f"{values['l0_base']:.0f}/{values.get('l0_concept', 0):.1f}")
        for name, fraction in values.items():
            level = name.removeprefix("dead_fraction_")
            if level != name and fraction > cfg.dead_warning_fraction and level not in self._warned:
                tqdm.write(f"[train] warning: {fraction:.0%} of the {level} latents have not fired "
                           f"in the last {cfg.dead_window_tokens} tokens (step {step})")
                self._warned.add(level)
        due = (self.steps_since_save >= cfg.checkpoint_every_steps
               or time.time() - self.last_saved >= 60 * cfg.checkpoint_every_minutes)
        due = distributed.any_rank(due)  # every rank saves at the same step (a stream's state is gathered)
        if stop.requested or (due and not last):
            self.save(step + 1)
        if stop.requested:
            self._progress.close()
            name = signal.Signals(stop.signal_number).name
            raise TrainingInterrupted(
                f"{name} received: stopped after step {step} of {self.total_steps} with a "
                f"checkpoint in {self.checkpoint.path}; run the same command to resume",
                stop.signal_number)

    def save(self, next_step: int) -> None:
        """A checkpoint from which training continues at `next_step` (refused for bad weights)."""
        if not all(torch.isfinite(p).all() for p in self.trainer.sae.parameters()):
            raise HarnessError(f"training diverged before step {next_step}: non-finite SAE weights; "
                               "the last good checkpoint is kept; lower lr in experiment.py")
        stream = getattr(self.source, "state_dict", None)  # a streamed source's shares
        shares = [share for part in distributed.gather_objects(stream()) for share in part] if stream else None
        if self.is_writer:
            self.checkpoint.save({"step": next_step, "config": asdict(self.cfg), "stream": shares,
                                  "trainer": self.trainer.state_dict(),
                                  "torch_rng": torch.get_rng_state(),
                                  "seconds": self.seconds_before + time.time() - self.started})
        self.last_saved, self.steps_since_save = time.time(), 0

    def summary(self) -> dict[str, Any]:
        """Training figures for final_info.json's training group."""
        done = self.total_steps - self.start_step
        return {
            "final_loss": self.values["total"],
            "final_reconstruction_loss": self.values["reconstruction"],
            "steps": float(self.total_steps),
            "tokens": float(self.total_steps * self.cfg.batch_size),
            "seconds": self.seconds_before + self.finished - self.started,
            "tokens_per_second": done * self.cfg.batch_size / max(self.finished - self.started, 1e-9),
            "resumed_at_step": float(self.start_step),
        }

"""Training checkpoints and graceful stops: an interrupted run resumes where it stopped.

A checkpoint holds everything the next step depends on: SAE and optimiser state, the trainer's
counters, the input scale, the step (which also fixes the data position: batch `step` of the
cached activations depends only on the seed and the step) and the configuration it was made
with. It is written to a temporary file and renamed, so the previous checkpoint survives a crash
during the write.

SIGINT (Ctrl-C) and SIGTERM during training set a flag; the training loop finishes its step,
saves a checkpoint and stops with `TrainingInterrupted`. A second signal interrupts at once.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch

from sae_harness.errors import DataError, HarnessError
from sae_harness.records.run_directory import atomic_path


class TrainingInterrupted(HarnessError):
    """Training stopped on a signal after saving a checkpoint."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class Checkpoint:
    """One checkpoint file, replaced atomically at every save."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, state: dict[str, Any]) -> None:
        try:
            with atomic_path(self.path) as tmp:
                torch.save(state, tmp)
        except OSError as error:
            raise DataError(f"could not write the checkpoint {self.path} ({error.strerror or error}); "
                            "free disk space, then rerun the same command to resume") from error

    def load(self) -> dict[str, Any] | None:
        if not self.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as error:  # a torn or foreign file: say so, never resume from it
            raise DataError(
                f"the checkpoint {self.path} cannot be read ({type(error).__name__}); delete it to "
                "start this run over, or set EXPERIMENT_OVERWRITE=1"
            ) from error

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:
            pass


class GracefulStop:
    """While active, SIGINT/SIGTERM request a stop (polled via `requested`); a second one raises."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal_number: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def _handle(self, signum, frame):
        if self.signal_number is not None:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}")
        self.signal_number = signum

    def __enter__(self) -> GracefulStop:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

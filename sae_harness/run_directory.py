"""The run directory: every file a run writes, written so that a crash never half-writes one.

    run_i/final_info.json        {group: {"means": {metric: float}}} for training and each eval
    run_i/run_status.json        state (running / finished / failed), failures, degeneracy
    run_i/config.json            the run's configuration, preset and provenance
    run_i/training_log.jsonl     one JSON object per logged training step
    run_i/sae/                   the SAE in SAE-Lens' format plus the concept level
    run_i/checkpoints/           training state while a run is unfinished (removed at the end)
    run_i/<eval>.json            each eval's full result (SAE-Bench's own schema where it has one)

JSON files are written to a temporary file and renamed into place (atomic on POSIX), with
NaN and infinity refused, so readers see either the old or the new file, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sae_harness.errors import ConfigurationError

FINAL_INFO = "final_info.json"
STATUS = "run_status.json"
CONFIG = "config.json"
TRAINING_LOG = "training_log.jsonl"
SAE_DIR = "sae"
CHECKPOINT = "checkpoints/train_state.pt"
EVAL_RESULTS = ("core.json", "sparse_probing.json", "absorption.json", "weights.json",
                "hierarchy.json")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path in `path`'s folder to write to; synced and renamed to `path` when the
    block succeeds, removed when it fails. Every file the harness writes goes through here."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    """JSON with NaN/inf refused (ValueError), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


def finite_means(values: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Metrics as floats, with non-finite or non-numeric ones removed (their names returned)."""
    kept, dropped = {}, []
    for name, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            dropped.append(name)
            continue
        if math.isfinite(number):
            kept[name] = number
        else:
            dropped.append(name)
    return kept, dropped


class RunDirectory:
    """One run's output folder (the `--out_dir` the caller named)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def sae_dir(self) -> Path:
        return self.path / SAE_DIR

    # --- state -----------------------------------------------------------------------------
    def status(self) -> dict:
        try:
            return read_json(self.file(STATUS))
        except (OSError, ValueError):
            return {}

    def is_finished(self) -> bool:
        return self.status().get("state") == "finished"

    def prepare(self, overwrite: bool) -> None:
        """Create the folder; refuse one that holds a finished run unless told to overwrite."""
        if self.path.exists() and not self.path.is_dir():
            raise ConfigurationError(f"--out_dir {self.path} exists and is not a directory; pick another path")
        if self.is_finished() and not overwrite:
            raise ConfigurationError(
                f"{self.path} already holds a finished run; choose a new --out_dir "
                "or set EXPERIMENT_OVERWRITE=1 to replace it"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigurationError(f"cannot create --out_dir {self.path}: {error.strerror}") from error

    def set_status(self, state: str, **fields: Any) -> None:
        status = self.status()
        status.update(fields, state=state)
        atomic_write_json(self.file(STATUS), status)

    def record_outcome(self, kind: str, group: str, reason: str) -> None:
        """Note that a result group `kind` ('failures' or 'skipped'), and why."""
        status = self.status()
        for other in ("failures", "skipped"):
            status.get(other, {}).pop(group, None)
        status.setdefault(kind, {})[group] = reason
        atomic_write_json(self.file(STATUS), status)

    def clear_outcome(self, group: str) -> None:
        """Forget an earlier failure or skip of `group` (it has now succeeded)."""
        status = self.status()
        if any(group in status.get(kind, {}) for kind in ("failures", "skipped")):
            for kind in ("failures", "skipped"):
                status.get(kind, {}).pop(group, None)
            atomic_write_json(self.file(STATUS), status)

    # --- results ---------------------------------------------------------------------------
    def final_info(self) -> dict:
        try:
            return read_json(self.file(FINAL_INFO))
        except (OSError, ValueError):
            return {}

    def set_group(self, group: str, means: dict[str, Any], **extra: Any) -> dict[str, float]:
        """Add or replace one result group in final_info.json; returns the means kept."""
        kept, dropped = finite_means(means)
        info = self.final_info()
        info[group] = {"means": kept, **extra}
        if dropped:
            info[group]["dropped_non_finite"] = dropped
        atomic_write_json(self.file(FINAL_INFO), info)
        return kept

    def remove_group(self, group: str) -> None:
        info = self.final_info()
        if group in info:
            del info[group]
            atomic_write_json(self.file(FINAL_INFO), info)

    def write_json(self, name: str, obj: Any) -> Path:
        atomic_write_json(self.file(name), obj)
        return self.file(name)

    def previous_config(self) -> dict | None:
        """The configuration an earlier, unfinished attempt in this folder ran with."""
        try:
            return read_json(self.file(CONFIG))["config"]
        except (OSError, ValueError, KeyError):
            return None

    def reset_results(self) -> None:
        """Forget an earlier run in this folder (only when told to overwrite it)."""
        for name in (FINAL_INFO, STATUS, TRAINING_LOG, CONFIG, CHECKPOINT, *EVAL_RESULTS):
            self.file(name).unlink(missing_ok=True)
        shutil.rmtree(self.sae_dir, ignore_errors=True)

    @contextmanager
    def lock(self):
        """Hold an exclusive lock on the folder: two processes never write one run at once."""
        with open(self.file(".lock"), "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                raise ConfigurationError(
                    f"another experiment is running in {self.path}; wait for it or pick another --out_dir"
                ) from error
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class TrainingLog:
    """Append-only JSON-lines log of training steps (a line is written and flushed per call)."""

    def __init__(self, path: Path, truncate_after_step: int | None = None):
        self.path = Path(path)
        if truncate_after_step is not None and self.path.exists():
            # resuming: keep only the lines of steps the checkpoint has already done
            lines = [line for line in self.path.read_text().splitlines()
                     if line.strip() and json.loads(line).get("step", -1) < truncate_after_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in lines))
        elif truncate_after_step is None:
            self.path.unlink(missing_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, allow_nan=True, default=_json_default) + "\n")
            handle.flush()


def read_training_log(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]

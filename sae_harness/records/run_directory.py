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
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
import re
from dataclasses import dataclass, field
from typing import Any

from sae_harness.records.numbers import finite_number
from sae_harness.records.degeneracy import DegeneracyCheck, check_degeneracy, group_means, is_legacy_final_info
from sae_harness.errors import ConfigurationError

FINAL_INFO = "final_info.json"
STATUS = "run_status.json"
CONFIG = "config.json"
TRAINING_LOG = "training_log.jsonl"
SAE_DIR = "sae"
CHECKPOINT = "checkpoints/train_state.pt"
NOTEBOOK = "notes.txt"  # beside the run folders: one harness block per run (notes.py)
STUDY_DIR = "study"  # the committed study's runs (study/run_1 ...), its notes.txt and plots/, out
                     # of the AI-Scientist loop's way (the loop writes run_1 ... beside run_0)
EVALUATIONS = ("weights", "hierarchy", "core", "sparse_probing", "absorption")
"""Every evaluation, in the order a run makes them; each writes `<name>.json` and a group."""
RESULT_GROUPS = ("training", *EVALUATIONS)
"""The groups of final_info.json (DESIGN 4)."""
EVAL_RESULTS = tuple(f"{name}.json" for name in EVALUATIONS)


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


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; it replaces `path` (whole) when the block
    succeeds and is removed when it fails, so `path` is always absent, old or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


RENAMED_CONFIG_FIELDS = {"d_sae_base": "n_base", "lw_base": "weight_l1_base",
                         "lw2_min": "weight_l1_concept_min", "lw2_max": "weight_l1_concept_max",
                         "lw2_ramp_fraction": "weight_l1_concept_ramp_fraction"}
"""Config fields renamed since runs were recorded (old name -> new): every reader of a recorded
configuration (config.json, a saved SAE's cfg, a checkpoint) sees the new names."""
RENAMED_LOG_KEYS = {"lw2": "weight_l1_concept_coef"}
"""training_log.jsonl keys renamed since runs were recorded (old name -> new)."""


def current_config_names(cfg: dict) -> dict:
    """A recorded configuration with today's field names (RENAMED_CONFIG_FIELDS)."""
    return {RENAMED_CONFIG_FIELDS.get(name, name): value for name, value in cfg.items()}


def read_config_json(path: Path) -> dict:
    """A run's config.json, its `config` under today's field names."""
    record = read_json(path)
    if isinstance(record, dict) and isinstance(record.get("config"), dict):
        record["config"] = current_config_names(record["config"])
    return record


def json_round_trip(obj):
    """`obj` as it reads back from JSON (tuples become lists), for comparing configurations."""
    return json.loads(json.dumps(obj))


def holds_finished_run(folder: Path, groups: tuple[str, ...], cfg=None) -> bool:
    """Whether `folder`'s final_info.json has every result group in `groups` and, when `cfg`
    (a Config) is given, its config.json records exactly that configuration: a run that
    scripts can reuse instead of training it again. A field added to Config after the run
    counts as recorded at Config's default (a new field's default keeps the old behaviour: the
    project's rule, held by the 60-step weight digests)."""
    info, config = Path(folder) / FINAL_INFO, Path(folder) / CONFIG
    if not info.exists():
        return False
    groups_held = read_json(info)
    if not all(group in groups_held for group in groups):
        return False
    if cfg is None:
        return True
    if not config.exists():
        return False
    from dataclasses import asdict

    recorded = read_config_json(config)["config"]
    wanted, defaults = json_round_trip(asdict(cfg)), json_round_trip(asdict(type(cfg)()))
    return set(recorded) <= set(wanted) and all(recorded.get(name, defaults[name]) == value
                                                 for name, value in wanted.items())


def finite_means(values: dict[str, Any]) -> tuple[dict[str, float], list[str]]:
    """Metrics as floats, with non-finite or non-numeric ones removed (their names returned)."""
    kept, dropped = {}, []
    for name, value in values.items():
        number = finite_number(value)
        if number is None:
            dropped.append(name)
        else:
            kept[name] = number
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
            return read_config_json(self.file(CONFIG))["config"]
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


def read_training_log(path: Path, skip_unreadable: bool = False) -> list[dict]:
    """training_log.jsonl's lines, under today's key names (RENAMED_LOG_KEYS). A line that is
    not JSON raises, unless `skip_unreadable` (plot.py: a crash mid-write leaves half a line)."""
    rows = []
    with open(path) as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                if skip_unreadable:
                    continue
                raise
            rows.append({RENAMED_LOG_KEYS.get(k, k): v for k, v in row.items()})
    return rows


# =============================================================================================
# A run directory as its readers (notes.txt, plot.py) see it
# =============================================================================================
@dataclass
class RunRecord:
    """What a run directory holds; absent files are None / {} and are listed in `missing`."""

    path: Path
    final_info: dict
    means: dict[str, dict[str, float]]
    """{group: {metric: float}}, from our final_info shape or the legacy flat one."""
    config: dict | None
    status: dict
    eval_results: dict[str, Any]
    """{group: its full result JSON} for the eval files that exist."""
    degeneracy: DegeneracyCheck
    missing: list[str] = field(default_factory=list)
    """What the run lacks, in words ("group absorption (failed: ...)", "training_log.jsonl")."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def number(self) -> int | None:
        return run_number(self.name)

    @property
    def legacy(self) -> bool:
        return is_legacy_final_info(self.final_info)

    @property
    def variant(self) -> str:
        if self.config and self.config.get("variant"):
            return str(self.config["variant"])
        return "legacy AI-Scientist template" if self.legacy else "unknown"

    @property
    def model_name(self) -> str | None:
        """The language model the SAE reads (config.json's preset, or a legacy eval_config)."""
        preset = (self.config or {}).get("preset") or {}
        if preset.get("model_name"):
            return str(preset["model_name"])
        for block in ("eval_config", "sae_cfg_dict"):
            name = (self.final_info.get(block) or {}).get("model_name") if self.legacy else None
            if name:
                return str(name)
        return None

    @property
    def precision(self) -> str | None:
        """'model <dtype>, SAE matmuls <dtype>' as the run recorded it (config.json), else None."""
        config = self.config or {}
        record = config.get("precision")
        if record:
            return f"model {record['model_dtype']}, SAE matmuls {record['sae_matmul_dtype']}"
        model = (config.get("preset") or {}).get("model_dtype")
        sae = (config.get("config") or {}).get("matmul_dtype")
        return f"model {model}, SAE matmuls {sae}" if model and sae else None

    @property
    def has_concept_level(self) -> bool:
        """False for a vanilla SAE (concept_k = 0, or a legacy template run)."""
        cfg = (self.config or {}).get("config") or {}
        return not self.legacy and cfg.get("concept_k", 1) != 0

    @property
    def degenerate(self) -> bool:
        return bool(self.degeneracy.reasons)

    @property
    def failures(self) -> dict[str, str]:
        """{group: reason} from run_status.json, with the run's own error under 'run'."""
        failures = _failures(self.status)
        if self.status.get("state") == "failed" and self.status.get("error"):
            failures.setdefault("run", str(self.status["error"]))
        return failures

    def metric(self, group: str, name: str) -> float | None:
        return self.means.get(group, {}).get(name)


def run_number(name: str) -> int | None:
    """3 for 'run_3'; None for a name without a run number ('run_local', 'baseline')."""
    match = re.fullmatch(r"run_(\d+)", name)
    return int(match.group(1)) if match else None


BASELINE_RUN = "run_0"  # the baseline every run is compared with (and the frontier's home)


def baseline_run_dir(runs_dir: Path) -> Path | None:
    """The baseline run folder for the runs in `runs_dir`: the run_0 beside them (the loop's
    folder), else the nearest run_0 in a folder above (a study folder such as study/ or
    study/hierarchy_pays/, whose runs are compared with the template's top-level run_0); None
    when there is none."""
    runs_dir = Path(runs_dir)
    for folder in (runs_dir, *runs_dir.resolve().parents):
        if (folder / BASELINE_RUN).is_dir():
            return folder / BASELINE_RUN
    return None


def _failures(status: dict) -> dict[str, str]:
    failures = status.get("failures")
    return {str(k): str(v) for k, v in failures.items()} if isinstance(failures, dict) else {}


def _read_json(path: Path) -> Any:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def load_run(run_dir: Path) -> RunRecord:
    """Read a run directory; never fails on a missing or unreadable file (it is listed instead)."""
    run_dir = Path(run_dir)
    missing = []
    final_info = _read_json(run_dir / FINAL_INFO)
    if not isinstance(final_info, dict):
        missing.append(f"{FINAL_INFO} ({'unreadable' if (run_dir / FINAL_INFO).exists() else 'absent'})")
        final_info = {}
    config = _read_json(run_dir / CONFIG)
    if not isinstance(config, dict):
        missing.append(CONFIG)
        config = None
    elif isinstance(config.get("config"), dict):
        config["config"] = current_config_names(config["config"])
    status = _read_json(run_dir / STATUS)
    if not isinstance(status, dict):
        missing.append(STATUS)
        status = {}
    means = group_means(final_info)
    failures = _failures(status)
    for group in RESULT_GROUPS:
        if group not in means:
            why = f"failed: {failures[group]}" if group in failures else f"not in {FINAL_INFO}"
            missing.append(f"group {group} ({why})")
    eval_results = {}
    for group in EVALUATIONS:
        if group == "core":
            continue  # core.json holds per-latent figures (MBs); its means are in final_info.json
        filename = f"{group}.json"
        result = _read_json(run_dir / filename)
        if isinstance(result, dict):
            eval_results[group] = result
        elif group in means and not is_legacy_final_info(final_info):
            # (a missing group is reported above, its file goes with it; legacy results hold
            # their SAE-Bench result inside final_info.json)
            missing.append(filename)
    if not (run_dir / TRAINING_LOG).is_file():
        missing.append(TRAINING_LOG)
    return RunRecord(run_dir, final_info, means, config, status, eval_results,
                     check_degeneracy(final_info, config), missing)

"""`python experiment.py --out_dir=run_i`: the one argument, and every failure as an exit code and
one last stderr line (the automated loop reads only the tail of stderr).

Exit codes: 0 finished (a failed evaluation is recorded and named on stderr, the run still
finishes); 2 a foreseen failure (HarnessError: bad configuration, missing model or text, full
disk, divergence), its message last; 128 + N stopped by signal N during training, with a
checkpoint to resume from; 130 interrupted outside training; 1 anything unforeseen, with its
traceback above the one-line summary. Whatever was written before the failure stays. Under
torchrun each rank exits so, with its own last line; torchrun then stops the other ranks.
"""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from sae_harness.hardware import distributed
from sae_harness.training.checkpoint import TrainingInterrupted
from sae_harness.errors import HarnessError
from sae_harness.data.presets import RunEnvironment, read_run_environment
from sae_harness.records.run_directory import RunDirectory


def parse_out_dir(argv: list[str] | None, description: str) -> Path:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", required=True, help="run directory to write (e.g. run_1)")
    args = parser.parse_args(argv)
    if not args.out_dir.strip():
        parser.error("--out_dir is empty; pass a directory such as --out_dir=run_1")
    return Path(args.out_dir)


def run_command(run: Callable[[Path, RunEnvironment, dict | None], object], description: str,
                argv: list[str] | None = None, environment: RunEnvironment | None = None,
                overrides: dict | None = None) -> int:
    """Parse --out_dir, run `run(out_dir, environment, overrides)`, map failures to exit codes.
    `environment` and `overrides` replace the EXPERIMENT_* variables' settings (tests use them)."""
    out_dir = parse_out_dir(argv, description)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # SIGTERM outside training
    try:
        env = environment or read_run_environment()
        distributed.start(env.preset.device)  # torchrun's processes join here (distributed.py)
        run(out_dir, env, overrides)
        distributed.stop()
        return 0
    except TrainingInterrupted as stop:
        _mark(out_dir, "interrupted", str(stop))
        print(f"error: {stop}", file=sys.stderr)
        return 128 + stop.signal_number
    except KeyboardInterrupt:
        _mark(out_dir, "interrupted", "interrupted outside training")
        print("error: interrupted (SIGINT/SIGTERM) outside training; results already written are "
              "kept; run the same command to resume", file=sys.stderr)
        return 130
    except HarnessError as error:
        _mark(out_dir, "failed", str(error))
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # unforeseen: full traceback, then the one-line summary last
        traceback.print_exc()
        _mark(out_dir, "failed", f"{type(error).__name__}: {error}")
        print(f"error: experiment failed: {type(error).__name__}: {str(error)[:300]}", file=sys.stderr)
        return 1


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _mark(out_dir: Path, state: str, reason: str) -> None:
    """Record why a run stopped, if this process was running it (rank 0 under torchrun)."""
    if not distributed.current().is_main:
        return
    run = RunDirectory(out_dir)
    if run.path.is_dir() and run.status().get("state") == "running":
        run.set_status(state, error=reason)

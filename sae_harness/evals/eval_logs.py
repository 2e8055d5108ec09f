"""Each evaluation's own output goes whole to `run_i/logs/<eval>.log`; the console keeps ours.

SAE-Bench and scikit-learn print a great deal (sparse probing alone prints ~400 "Num non-zero
elements" / "Test accuracy for ..." lines, and their progress bars some 2,000 more on stderr).
Inside `eval_log(path)` everything written to sys.stdout and sys.stderr (prints, tqdm bars,
Python warnings) lands in that file, and a traceback that escapes is written there too; our
own lines go through `say`, which prints on the console and into the log.
"""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

LOGS_DIR = "logs"
"""The run directory's folder of eval logs."""

_consoles: list = []
"""The console streams of the eval logs open now (innermost last)."""


@contextlib.contextmanager
def eval_log(path: Path) -> Iterator[Path]:
    """Send sys.stdout and sys.stderr to `path` (replaced) until the block ends."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", buffering=1) as log:
        _consoles.append(sys.stdout)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                try:
                    yield path
                except BaseException:
                    traceback.print_exc(file=log)
                    raise
        finally:
            _consoles.pop()


def say(line: str) -> None:
    """One of our own lines: on the console, and in the open eval log if there is one."""
    if _consoles:
        print(line, file=_consoles[-1], flush=True)
    print(line, flush=True)

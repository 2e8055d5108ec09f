"""An eval's own output goes to its log file; our lines reach the console too (eval_logs.py)."""

import sys
import warnings

import pytest

from sae_harness.evals.eval_logs import eval_log, say


def test_prints_bars_and_warnings_go_to_the_log_and_our_lines_to_both(tmp_path, capsys, monkeypatch):
    # a warning is shown as outside pytest (which records them): written to sys.stderr when raised
    monkeypatch.setattr(warnings, "showwarning", lambda message, category, filename, lineno, file=None,
                        line=None: sys.stderr.write(warnings.formatwarning(message, category, filename, lineno)))
    log = tmp_path / "logs" / "core.log"
    with eval_log(log), warnings.catch_warnings():
        warnings.simplefilter("always")
        print("Num non-zero elements: 12")
        print("\rprogress 50%", file=sys.stderr)
        warnings.warn("lbfgs failed to converge")
        say("[core] explained variance 0.9")
    console = capsys.readouterr()
    text = log.read_text()
    assert "Num non-zero elements: 12" in text and "progress 50%" in text and "lbfgs failed" in text
    assert "[core] explained variance 0.9" in text
    assert console.out == "[core] explained variance 0.9\n" and console.err == ""


def test_a_failure_leaves_its_traceback_in_the_log_and_is_raised(tmp_path, capsys):
    log = tmp_path / "absorption.log"
    with pytest.raises(ValueError, match="no letters"):
        with eval_log(log):
            print("k-sparse probing ...")
            raise ValueError("no letters")
    text = log.read_text()
    assert text.index("k-sparse probing") < text.index("Traceback") < text.index("ValueError: no letters")
    assert capsys.readouterr().out == ""
    print("after")  # the console is back
    assert capsys.readouterr().out == "after\n"

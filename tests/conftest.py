"""Test set-up: offline, the tiny Gemma-2 hub cache, and a scratch cache directory.

HF_HOME must be set before huggingface_hub is imported (it reads it once), so it is set here,
at import time, to the fixture folder (kept between sessions; SAE_HARNESS_TEST_FIXTURES moves it).
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(os.environ.get("SAE_HARNESS_TEST_FIXTURES", REPO / ".pytest_fixtures"))
os.environ["HF_HOME"] = str(FIXTURES / "hf_home")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

TIERS = ("unit", "model", "e2e")
"""Every test is in one tier (pytest.ini). A test marked none is `model` when it uses the tiny
Gemma-2 (a fixture below, directly or through another fixture), else `unit`; whole-run and
subprocess files say `e2e` themselves. A unit test that starts a Python process or builds the
fixture fails at once (`unit_tests_stay_small`), so the tier cannot drift."""
MODEL_FIXTURES = {"tiny_gemma2", "tiny_lm"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier)]
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid} is marked {tiers}: one tier a test")
        if not tiers:
            tier = ("e2e" if item.get_closest_marker("slow") else
                    "model" if MODEL_FIXTURES & set(item.fixturenames) else "unit")
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def unit_tests_stay_small(request, monkeypatch):
    """In a unit test, starting a Python process or building the tiny model fails with why."""
    if request.node.get_closest_marker("unit") is None:
        return
    import subprocess

    import tiny_gemma2

    why = f"{request.node.nodeid} is a unit test; mark it `model` or `e2e` to "
    popen_init = subprocess.Popen.__init__

    def no_python_process(self, args, *rest, **kwargs):
        program = str(args[0] if isinstance(args, (list, tuple)) else args).split()[0]
        if Path(program).name.startswith("python") or program == sys.executable:
            raise AssertionError(why + f"start {args!r}")
        popen_init(self, args, *rest, **kwargs)

    def no_model(*args, **kwargs):
        raise AssertionError(why + "build the tiny model")

    monkeypatch.setattr(subprocess.Popen, "__init__", no_python_process)
    monkeypatch.setattr(tiny_gemma2, "build", no_model)


@pytest.fixture(scope="session")
def tiny_gemma2():
    """Paths of the tiny Gemma-2 hub cache and its text dataset (built once, then reused)."""
    import tiny_gemma2

    return tiny_gemma2.build(FIXTURES)


@pytest.fixture(scope="session")
def tiny_lm(tiny_gemma2):
    """The tiny Gemma-2 loaded through the real setting's loader (on CPU)."""
    from sae_harness.data.language_model import load_language_model
    from tiny_gemma2 import tiny_real_preset

    preset = tiny_real_preset(tiny_gemma2["text"])
    return preset, load_language_model(preset, FIXTURES / "unused_cache")

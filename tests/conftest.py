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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gemma2():
    """Paths of the tiny Gemma-2 hub cache and its text dataset (built once, then reused)."""
    import tiny_gemma2

    return tiny_gemma2.build(FIXTURES)


@pytest.fixture(scope="session")
def tiny_lm(tiny_gemma2):
    """The tiny Gemma-2 loaded through the real setting's loader (on CPU)."""
    from sae_harness.language_model import load_language_model
    from tiny_gemma2 import tiny_real_preset

    preset = tiny_real_preset(tiny_gemma2["text"])
    return preset, load_language_model(preset, FIXTURES / "unused_cache")

"""The README a newcomer reads: short, its two commands first, every variant in its table."""

import re

import experiment as E
from conftest import REPO

README = (REPO / "README.md").read_text()


def test_the_readme_is_short_and_opens_with_the_two_commands():
    assert len(README.splitlines()) <= 200
    block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert len(block) == 2
    assert "experiment.py --out_dir=" in block[0] and "EXPERIMENT_PRESET=embedded" in block[0]
    assert block[1].rstrip().endswith("-m pytest")  # .ci/run appends its own options to it


def test_every_variant_has_a_row_in_the_variants_table():
    rows = set(re.findall(r"^\| `([a-z_0-9]+)`", README, re.M))
    assert set(E.VARIANTS) <= rows, f"no README row for {sorted(set(E.VARIANTS) - rows)}"

"""SAE-Bench sparse probing through our wrapper, on the tiny Gemma-2 with the embedded datasets:
the local data SAE-Bench reads, its own result schema, and its activation artifacts (crash-safe,
keyed by setting, reused)."""

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from saes import hierarchical_sae
from sae_harness.errors import ConfigurationError, DataError
from sae_harness.evals import sparse_probing as SP
from sae_harness.evals.sae_bench_results import read_eval_output
from sae_harness.data.sae_probes_data import EMBEDDED_PROBING_SUITE
from tiny_gemma2 import WIDTHS, tiny_real_preset

# two of the four embedded datasets (5 of the 13 binary tasks) keep the test short; the split of
# all four is tested without the model below
DATASETS = ["sae_probes/amazon_5star", "sae_probes/ag_news"]
SAE_BENCH_METRICS = {f"{who}_test_accuracy" for who in ("llm", "sae")} | {
    f"{who}_top_{k}_test_accuracy" for who in ("llm", "sae") for k in SP.K_VALUES}
STANDARDISED = {f"{who}_top_{k}_test_accuracy_standardised" for who in ("llm", "sae")
                for k in SP.STANDARDISED_K}
METRICS = SAE_BENCH_METRICS | STANDARDISED


def small_sae(preset):
    return hierarchical_sae(WIDTHS["d_model"], 256, 64, 4, model_name=preset.model_name,
                             hook_layer=preset.hook_layer, context_size=preset.context_length,
                             init_scale_concept=1.0)


@pytest.fixture(scope="module")
def probing(tiny_gemma2, tiny_lm, tmp_path_factory):
    """Two runs of the eval on one SAE with the same artifact folder; loader calls counted."""
    preset = tiny_real_preset(tiny_gemma2["text"], context_length=16, eval_sizes="tiny")
    lm = tiny_lm[1]
    sae = small_sae(preset)
    root = tmp_path_factory.mktemp("probing")
    calls = []
    loader = SP.embedded_train_test_data
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SP, "embedded_train_test_data",
                      lambda *args: calls.append(args[0]) or loader(*args))
        first = SP.run_sparse_probing(sae, lm, preset, root / "first.json", root / "artifacts",
                                      dataset_names=DATASETS)
        first_calls = list(calls)
        folder = SP.artifacts_dir(root / "artifacts", SP.probing_config(preset, DATASETS), lm,
                                  preset.hook_name, preset.device)
        files = SP.artifact_files(folder, DATASETS)
        stamps = {name: path.stat().st_mtime_ns for name, path in files.items()}
        calls.clear()
        second = SP.run_sparse_probing(sae, lm, preset, root / "second.json", root / "artifacts",
                                       dataset_names=DATASETS)
    return dict(preset=preset, lm=lm, sae=sae, root=root, first=first, second=second,
                first_calls=first_calls, second_calls=list(calls), folder=folder, files=files,
                stamps=stamps)


# --- the embedded data ---------------------------------------------------------------------------
def test_embedded_classes_split_into_disjoint_reproducible_train_and_test_sets():
    sizes = SP.PROBING_SIZES["cpu"]
    for name, classes in EMBEDDED_PROBING_SUITE.items():
        train, test = SP.embedded_train_test_data(name, sizes.probe_train_set_size,
                                                  sizes.probe_test_set_size, 42)
        assert list(train) == list(test) == list(classes)
        texts = set()
        for cls in classes:
            assert len(train[cls]) == sizes.probe_train_set_size // 2
            assert len(test[cls]) == sizes.probe_test_set_size // 2
            assert len(set(train[cls]) | set(test[cls])) == len(train[cls]) + len(test[cls])
            assert not texts & (set(train[cls]) | set(test[cls]))  # no text in two classes
            texts |= set(train[cls]) | set(test[cls])
        assert (train, test) == SP.embedded_train_test_data(
            name, sizes.probe_train_set_size, sizes.probe_test_set_size, 42)
        assert train != SP.embedded_train_test_data(
            name, sizes.probe_train_set_size, sizes.probe_test_set_size, 43)[0]


def test_embedded_data_too_small_for_the_sizes_is_refused_with_the_reason():
    sizes = SP.PROBING_SIZES["sae_bench"]
    with pytest.raises(DataError, match=r"professions:actor has \d+.*eval_sizes='cpu'"):
        SP.check_embedded_sizes(list(EMBEDDED_PROBING_SUITE), sizes.probe_train_set_size,
                                sizes.probe_test_set_size)


def test_registration_serves_local_data_delegates_the_rest_and_restores_sae_bench(monkeypatch):
    import sae_bench.sae_bench_utils.dataset_info as dataset_info
    import sae_bench.sae_bench_utils.dataset_utils as dataset_utils

    hub_calls = []

    def hub_loader(*args):
        hub_calls.append(args)
        return {"a": ["x"]}, {"a": ["y"]}

    monkeypatch.setattr(dataset_utils, "get_multi_label_train_test_data", hub_loader)
    chosen_before = {k: list(v) for k, v in dataset_info.chosen_classes_per_dataset.items()}
    with pytest.raises(RuntimeError, match="inside"):
        with SP.embedded_probing_datasets():
            assert dataset_info.chosen_classes_per_dataset["sae_probes/code"] == ["C", "Python", "HTML"]
            train, test = dataset_utils.get_multi_label_train_test_data("sae_probes/code", 8, 4, 42)
            assert {k: len(v) for k, v in train.items()} == {"C": 4, "Python": 4, "HTML": 4}
            assert {k: len(v) for k, v in test.items()} == {"C": 2, "Python": 2, "HTML": 2}
            assert not hub_calls
            dataset_utils.get_multi_label_train_test_data("fancyzhx/ag_news", 8, 4, 42)
            assert hub_calls == [("fancyzhx/ag_news", 8, 4, 42)]
            raise RuntimeError("inside")  # globals are restored on errors too
    assert dataset_utils.get_multi_label_train_test_data is hub_loader
    assert dataset_info.chosen_classes_per_dataset == chosen_before


# --- the eval ------------------------------------------------------------------------------------
def test_result_json_is_sae_bench_sparse_probing_output(probing):
    from sae_bench.evals.sparse_probing.eval_output import SparseProbingEvalOutput

    output = read_eval_output(probing["root"] / "first.json", SparseProbingEvalOutput)
    assert output.eval_type_id == "sparse_probing"
    assert output.eval_config.dataset_names == DATASETS
    assert output.eval_config.k_values == [1, 2, 5, 10, 20, 50]
    assert output.eval_config.context_length == 16
    assert [d.dataset_name for d in output.eval_result_details] == [f"{n}_results" for n in DATASETS]
    per_class = output.eval_result_unstructured["sae_probes/ag_news_results"]
    assert set(per_class["sae_top_1_test_accuracy"]) == {"world", "sports", "business"}
    assert output.sae_cfg_dict["d_sae"] == 256 + 64
    assert output.sae_cfg_dict["dtype"] == "float32"
    # the returned means are the JSON's metrics
    metrics = {**asdict(output.eval_result_metrics.llm), **asdict(output.eval_result_metrics.sae)}
    means = probing["first"]
    assert {k: v for k, v in metrics.items() if v is not None} == {
        k: v for k, v in means.items() if k in SAE_BENCH_METRICS}
    # our standardised probes sit beside SAE-Bench's output under their own, labelled key
    ours = json.loads((probing["root"] / "first.json").read_text())[SP.STANDARDISED_KEY]
    assert "Not SAE-Bench's" in ours["definition"]
    assert ours["means"] == {k: v for k, v in means.items() if k in STANDARDISED}


def test_returns_every_llm_and_sae_accuracy_as_a_float_in_0_1(probing):
    means = probing["first"]
    assert set(means) == METRICS
    for name, value in means.items():
        assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0, name
    assert probing["sae"].dtype == torch.float32


def test_second_run_reuses_the_artifacts_and_scores_the_sae_identically(probing):
    assert sorted(probing["first_calls"]) == sorted(DATASETS)  # first run: data loaded
    assert probing["second_calls"] == []  # second run: neither data nor model activations
    for name, path in probing["files"].items():
        assert path.stat().st_mtime_ns == probing["stamps"][name], f"{name} artifact rewritten"
    # the SAE probes' random state does not depend on whether the artifacts existed
    assert probing["second"] == probing["first"]


def test_artifacts_are_keyed_by_everything_that_determines_them(probing):
    preset, lm, root = probing["preset"], probing["lm"], probing["root"] / "keys"

    def folder(p, names=DATASETS):
        return SP.artifacts_dir(root, SP.probing_config(p, names), lm, p.hook_name, p.device)

    assert folder(preset) == folder(preset)
    others = [folder(tiny_real_preset(preset.text_dataset, context_length=16, eval_sizes="cpu")),
              folder(tiny_real_preset(preset.text_dataset, context_length=32, eval_sizes="tiny")),
              folder(tiny_real_preset(preset.text_dataset, context_length=16, eval_sizes="tiny",
                                      hook_layer=0)),
              folder(preset, DATASETS[:1]),
              # the model's dtype (precision.py chooses it per machine): an fp32 model's
              # activations are never read as a bf16 model's
              folder(tiny_real_preset(preset.text_dataset, context_length=16, eval_sizes="tiny",
                                      model_dtype="bfloat16"))]
    assert len({folder(preset), *others}) == 1 + len(others)
    # SAE-Bench's artifacts, their key and our standardised LLM probes' results, nothing else
    assert set(os.listdir(probing["folder"])) == ({"key.json", SP.STANDARDISED_LLM_FILE}
                                                  | {p.name for p in probing["files"].values()})


def test_unknown_sizes_are_a_configuration_error(probing):
    preset = tiny_real_preset(probing["preset"].text_dataset, eval_sizes="huge")
    with pytest.raises(ConfigurationError, match="eval_sizes='huge'"):
        SP.probing_config(preset)


# --- crash safety of artifacts -------------------------------------------------------------------
class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("crash while saving")


def test_an_interrupted_artifact_save_leaves_no_file_behind(tmp_path):
    folder = tmp_path / "artifacts"
    folder.mkdir()
    target = folder / "data_activations.pt"
    with SP.atomic_torch_saves_into(folder):
        with pytest.raises(RuntimeError, match="crash while saving"):
            torch.save({"big": torch.zeros(100_000), "bad": Unpicklable()}, str(target))
        torch.save({"ok": torch.ones(3)}, str(folder / "good_activations.pt"))
        torch.save({"elsewhere": 1}, str(tmp_path / "other.pt"))  # outside: written directly
    assert os.listdir(folder) == ["good_activations.pt"]
    assert torch.equal(torch.load(folder / "good_activations.pt")["ok"], torch.ones(3))
    assert (tmp_path / "other.pt").is_file()
    assert torch.save.__module__.startswith("torch")  # the original is back


@pytest.mark.e2e  # starts a Python process to get a PID that has exited
def test_temporaries_of_dead_processes_are_removed(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)
    dead = tmp_path / f".x_activations.pt.{int(finished.stdout)}.tmp"
    alive = tmp_path / f".y_activations.pt.{os.getpid()}.tmp"
    dead.write_bytes(b"partial")
    alive.write_bytes(b"in progress")
    SP.remove_stale_temporaries(tmp_path)
    assert not dead.exists() and alive.exists()


def test_standardising_lets_a_massive_channel_stop_stalling_the_top_1_probe():
    """Gemma-3's case: a huge channel with a small class difference takes the top-1 slot of the
    unscaled ranking; z-scored, the informative channel wins and the probe works."""
    from sae_bench.evals.sparse_probing import probe_training as P

    g = torch.Generator().manual_seed(0)

    def split(n):
        acts = {}
        for name, sign in (("yes", 1.0), ("no", -1.0)):
            x = torch.randn(n, 8, generator=g)
            x[:, 0] = 1500 + 30 * torch.randn(n, generator=g) + 5 * sign  # massive, weak
            x[:, 3] += 2.0 * sign  # informative, small
            acts[name] = x
        return acts

    train, test = split(200), split(100)
    _, plain = P.train_probe_on_activations(train, test, select_top_k=1)
    standardised = SP.standardised_top_k_accuracies(train, test, k_values=(1,))[1]
    assert max(plain.values()) < 0.7  # SAE-Bench's ranking picks channel 0
    assert min(standardised.values()) > 0.9


def test_standardised_probes_are_the_same_from_caches_as_computed_fresh(tmp_path):
    """The standardised probes reuse what SAE-Bench encoded and the LLM's cached results; the
    numbers must not move: the LLM's negative sampling is replayed on torch's generator before the
    SAE's probes (SAE-Bench's prepare_probe_data draws from it)."""
    from sae_bench.sae_bench_utils import activation_collection as AC

    g = torch.Generator().manual_seed(0)
    names = ["first", "second"]
    for name in names:
        acts = {split: {c: torch.randn(n + i, 4, 6, generator=g) + i for i, c in enumerate("abc")}
                for split, n in (("train", 30), ("test", 12))}
        torch.save(acts, SP.artifact_files(tmp_path, [name])[name])

    class Encoder(torch.nn.Module):  # a ReLU "SAE" of 10 latents, as get_sae_meaned_activations needs
        dtype = torch.float32

        def __init__(self):
            super().__init__()
            self.W = torch.randn(6, 10, generator=g)

        def encode(self, x):
            return torch.relu(x @ self.W)

    sae = Encoder()
    fresh = SP.standardised_probes(sae, tmp_path, names, 8, seed=3)
    assert (tmp_path / SP.STANDARDISED_LLM_FILE).is_file()  # the LLM's results are kept
    encoded = []
    for name, path in SP.artifact_files(tmp_path, names).items():
        acts = torch.load(path, weights_only=False)
        encoded += [AC.get_sae_meaned_activations(acts[s], sae, 8) for s in ("train", "test")]
    torch.manual_seed(123)  # whatever state the generator is in before
    cached = SP.standardised_probes(sae, tmp_path, names, 8, seed=3, sae_encoded=encoded)
    assert cached == fresh and len(fresh) == 2 * len(SP.STANDARDISED_K)
    (tmp_path / SP.STANDARDISED_LLM_FILE).unlink()
    assert SP.standardised_probes(sae, tmp_path, names, 8, seed=3, sae_encoded=encoded[:1]) == fresh


def test_probe_fitting_hides_sklearns_penalty_deprecation():
    import warnings

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from sae_harness.evals.sparse_probing import probe_fitting

    X = np.random.default_rng(0).normal(size=(50, 3))
    y = (X[:, 0] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any other warning would surface as an error
        with probe_fitting():
            LogisticRegression(penalty="l2", max_iter=100).fit(X, y)  # SAE-Bench's call
    with pytest.warns(FutureWarning, match="'penalty' was deprecated"):
        LogisticRegression(penalty="l2", max_iter=100).fit(X, y)

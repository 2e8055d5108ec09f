"""The edits an automated coder makes to experiment.py: each reaches the run, or stops it at once.

Each case applies a textual edit to a copy of experiment.py (the old text must occur exactly
once, so a change of experiment.py that invalidates an edit fails here loudly), loads the copy
as its own module and runs it on the tiny Gemma-2 fixture as `--out_dir=run_1` would, with no
evaluations (EXPERIMENT_EVALS=none: what is checked here is training and its records). The tiny
setting is one more entry of the copy's SETTING_SHRINK, so Config's values reach it in
proportion as they reach the embedded one.

What "reaches the run" means is read off what the run records: config.json, the start lines, the
training log, final_info.json, and the saved SAE reloading and reproducing the recorded held-out
figures. A refused edit exits 2 and its last stderr line names what the edit broke.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch

from conftest import REPO
from sae_harness.run import experiment_run
from sae_harness.data.activations import prepare_activations
from sae_harness.evals.heldout import heldout_statistics
from sae_harness.records.run_directory import read_training_log
from tiny_gemma2 import tiny_environment

pytestmark = pytest.mark.e2e  # whole runs or subprocesses (conftest.TIERS)

TINY_SHRINK = dict(training_tokens=10_000, n_base=64, batch_size=16, heldout_tokens=128,
                   log_every=5, dead_window_tokens=500, auxk_dead_tokens=1000)
"""Config's real sizes divided down to the fixture: 5000 tokens in 39 steps of 128, n_base 256."""


@dataclass
class Edit:
    name: str
    replacements: list[tuple[str, str]]
    refused: str | None = None
    """A fragment of the last stderr line when the edit must stop the run; None: it must run."""
    checks: list = field(default_factory=list)
    """Functions of the finished run (a Finished) that assert what the edit changed."""


@dataclass
class Finished:
    folder: Path
    stdout: str
    config: dict
    log: list[dict]
    training: dict
    module: object
    heldout: object


def config_value(name, value):
    def check(run: Finished):
        assert run.config["config"][name] == value, f"config.json {name} = {run.config['config'][name]}"
    return check


def start_line_says(fragment):
    def check(run: Finished):
        line = next(line for line in run.stdout.splitlines() if line.startswith("[config]"))
        assert fragment in line, line
    return check


def steps(n):
    def check(run: Finished):
        assert run.training["steps"] == n and run.log[-1]["step"] == n - 1
    return check


def logged(name, predicate, what):
    def check(run: Finished):
        values = [row[name] for row in run.log]
        assert predicate(values), f"{name} in the log {values} is not {what}"
    return check


def concept_l0_varies_per_token(run: Finished):
    """BatchTopK: k concepts a token on average over a batch, a varying number per token."""
    assert all(row["l0_concept"] == pytest.approx(10, abs=0.5) for row in run.log)
    sae = run.module.HierarchicalSAE.load(run.folder / "sae")
    per_token = (sae.encode(run.heldout)[:, sae.n_base:] > 0).sum(-1)
    assert per_token.min() < per_token.max(), per_token.unique()


def lr_warms_up_over(n):
    def check(run: Finished):
        cfg = run.config["config"]
        lrs = {row["step"]: row["lr"] for row in run.log}
        assert lrs[5] == pytest.approx(cfg["lr"] * 6 / n)
        assert f"warm-up {n}," in run.stdout
    return check


def has_buffer(name):
    def check(run: Finished):
        sae = run.module.HierarchicalSAE.load(run.folder / "sae")
        assert name in dict(sae.named_buffers()) or name in dict(sae.named_parameters())
    return check


def plain_autograd_trained_the_gain(run: Finished):
    assert run.training["plain_autograd"] == 1.0 and "gradients by plain autograd" in run.stdout
    sae = run.module.HierarchicalSAE.load(run.folder / "sae")
    assert (sae.input_gain - 1).abs().max() > 1e-4  # it got gradients and moved


CONFIG_LINE = {"concept_k": "    concept_k: int = 10  # active concept latents per token (TopK); 0: none, a vanilla ReLU SAE",
               "batch_size": "    batch_size: int = 2048  # tokens per optimisation step (the idea's and the template's 2048)"}
TOPK_LINES = ("""                indices = score.topk(self.concept_k, dim=-1, sorted=False).indices
        values = F.relu(selected_preactivations(z1, self.W_enc2, self.b_enc2, pre2, indices, active))""")
BATCH_TOPK_LINES = """                chosen = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
                chosen[score.flatten().topk(self.concept_k * len(x), sorted=False).indices] = True
                chosen = chosen.view_as(score)  # BatchTopK: k a token on average over the batch
                width = max(int(chosen.sum(-1).max()), 1)
                indices = chosen.float().topk(width, dim=-1, sorted=False).indices
                keep = chosen.gather(1, indices)
        values = F.relu(selected_preactivations(z1, self.W_enc2, self.b_enc2, pre2, indices, active)) * keep"""
BASE_LINE = "        z1 = F.relu(centred_encoder(x, self.b_dec, self.W_enc1, self.b_enc1))"
BUFFER_LINE = '        self.register_buffer("concept_selection_bias", torch.zeros(n_concept))'
THRESHOLD_BUFFER = BUFFER_LINE + '\n        self.register_buffer("base_threshold", torch.full((n_base,), 0.05))'
THRESHOLD_FORWARD = ("        pre1 = centred_encoder(x, self.b_dec, self.W_enc1, self.b_enc1)\n"
                     "        z1 = F.relu(pre1) * (pre1 > self.base_threshold)  # JumpReLU")
SCALED = '    INPUT_SCALED = ("b_enc1", "b_enc2", "b_dec", "concept_selection_bias", "concept_threshold")'
LOSS_FIELD = "    auxk: torch.Tensor\n"
LOSS_WEIGHTED = '            "auxk": cfg.auxk_alpha * auxk,\n'
LOSS_BUILT = "concept_reconstruction=concept_reconstruction, auxk=auxk,"

EDITS = [
    # the seed's plan of runs
    Edit("init scale 0.02", [("init_scale_concept: float = 0.001", "init_scale_concept: float = 0.02")],
         checks=[config_value("init_scale_concept", 0.02)]),
    Edit("larger concept k", [(CONFIG_LINE["concept_k"], CONFIG_LINE["concept_k"].replace("= 10", "= 26"))],
         checks=[config_value("concept_k", 26),
                 logged("l0_concept", lambda v: max(v) > 10 and max(v) <= 26, "above 10, at most 26")]),
    Edit("weight_l1_concept_max up to 0.4", [("weight_l1_concept_max: float = 0.12", "weight_l1_concept_max: float = 0.4")],
         checks=[config_value("weight_l1_concept_max", 0.4), logged("weight_l1_concept_coef", lambda v: 0.12 < max(v) <= 0.4, "past 0.12")]),
    Edit("2x training tokens", [("training_tokens: int = 50_000_000", "training_tokens: int = 100_000_000")],
         checks=[config_value("training_tokens", 10_000), steps(78),
                 start_line_says("training_tokens 100000000 -> 10000 (tiny setting /10000)")]),
    # names the harness reads, and names only experiment.py reads
    Edit("rename a field the harness reads", [(CONFIG_LINE["batch_size"],
                                               CONFIG_LINE["batch_size"].replace("batch_size", "tokens_per_step"))],
         refused="Config.batch_size (read for the activation batches"),
    Edit("rename a field only experiment.py reads", [("    l1_base: float = 0.1\n", "    l1_base_coef: float = 0.1\n")],
         refused="cfg.l1_base (line"),
    Edit("remove a field", [("    adam_betas: tuple[float, float] = (0.9, 0.999)\n", "")],
         refused="cfg.adam_betas (line"),
    Edit("rename an SAEOutput field", [("    z2_values: torch.Tensor  # (B, m)", "    z2_vals: torch.Tensor  # (B, m)")],
         refused="SAEOutput.z2_values"),
    # the objective
    Edit("a new loss term", [
        (LOSS_FIELD, LOSS_FIELD + "    decoder_overlap: torch.Tensor\n"),
        ("        warm = schedule.concept_penalty_factor(step)\n",
         "        warm = schedule.concept_penalty_factor(step)\n"
         "        decoder_overlap = (sae.W_dec2 @ sae.W_dec1.T).pow(2).mean() if sae.n_concept else zero\n"),
        (LOSS_WEIGHTED, LOSS_WEIGHTED + '            "decoder_overlap": 0.01 * decoder_overlap,\n'),
        (LOSS_BUILT, LOSS_BUILT + " decoder_overlap=decoder_overlap,")],
        checks=[logged("decoder_overlap", lambda v: all(x > 0 for x in v), "positive"),
                logged("grad_share_decoder_overlap", lambda v: all(abs(x) < 1e-6 for x in v),
                       "zero (it does not touch the concept encoder)")]),
    Edit("a new term that is a float", [
        (LOSS_FIELD, LOSS_FIELD + "    batch_fraction: float\n"),
        (LOSS_BUILT, LOSS_BUILT + " batch_fraction=len(x) / cfg.batch_size,")],
        checks=[logged("batch_fraction", lambda v: all(x == 1.0 for x in v), "1.0")]),
    # the SAE
    Edit("a BatchTopK concept level", [(TOPK_LINES, BATCH_TOPK_LINES)], checks=[concept_l0_varies_per_token]),
    Edit("a JumpReLU threshold buffer, declared", [(BUFFER_LINE, THRESHOLD_BUFFER), (BASE_LINE, THRESHOLD_FORWARD),
                                                   (SCALED, SCALED.replace('"concept_selection_bias"',
                                                                           '"concept_selection_bias", "base_threshold"'))],
         checks=[has_buffer("base_threshold")]),
    Edit("a new buffer, undeclared", [(BUFFER_LINE, THRESHOLD_BUFFER), (BASE_LINE, THRESHOLD_FORWARD)],
         refused="base_threshold is in neither INPUT_SCALED nor SCALE_FREE"),
    Edit("a new buffer in input units declared scale-free", [
        (BUFFER_LINE, THRESHOLD_BUFFER), (BASE_LINE, THRESHOLD_FORWARD),
        ('    SCALE_FREE = ("W_enc1",', '    SCALE_FREE = ("base_threshold", "W_enc1",')],
        refused="missing from INPUT_SCALED"),
    Edit("a learned input gain the kernels give no gradient (trains on plain autograd)", [
        (BUFFER_LINE, BUFFER_LINE + "\n        self.input_gain = nn.Parameter(torch.ones(d_in))"),
        (BASE_LINE, BASE_LINE.replace("centred_encoder(x,", "centred_encoder(x * self.input_gain,")),
        ('    SCALE_FREE = ("W_enc1",', '    SCALE_FREE = ("input_gain", "W_enc1",')],
        checks=[plain_autograd_trained_the_gain]),
    Edit("a GELU base level (the fold cannot hold)", [(BASE_LINE, BASE_LINE.replace("F.relu", "F.gelu"))],
         refused="not positively homogeneous"),
    Edit("a forward with a shape error", [
        ("        active = ActiveLatents.of(z1)\n        x_hat = latent_matmul(z1, self.W_dec1, active, self.b_dec)\n",
         "        active = ActiveLatents.of(z1)\n        x_hat = latent_matmul(z1, self.W_dec1, active, self.b_dec)\n"
         "        x_hat = x_hat + z1[:, :3]\n")],
        refused="failed at experiment.py line"),
    Edit("a tensor that is not registered", [(BUFFER_LINE, BUFFER_LINE + "\n        self.running_l0 = torch.zeros(())")],
         refused="running_l0 is neither a parameter nor a buffer"),
    Edit("a local variable in the SAE's constructor", [
        ("        n_base, n_concept = self.n_base, self.n_concept\n",
         "        n_base, n_concept = self.n_base, self.n_concept\n        unused_local = 2.0\n")],
        checks=[has_buffer("concept_selection_bias")]),
    Edit("a trainer statistic that is not checkpointed", [
        ('        """Figures of the whole batch: under torchrun this rank holds only a share of it."""\n',
         '        """Figures of the whole batch: under torchrun this rank holds only a share of it."""\n'
         '        self.tokens_seen = torch.zeros(())\n')],
        refused="tokens_seen holds state (Tensor) that STATE does not name"),
    # variants and schedules
    Edit("a changed default variant", [('DEFAULT_VARIANT = "tuned_cosine"', 'DEFAULT_VARIANT = "cosine_sparsity"')],
         checks=[config_value("concept_k", 12), config_value("variant", "cosine_sparsity")]),
    Edit("a renamed variant that is not asked for", [('    "baseline": dict(concept_k=0,', '    "vanilla": dict(concept_k=0,')],
         checks=[config_value("concept_k", 10)]),
    Edit("a renamed default variant", [('    "tuned_cosine": {},', '    "tuned": {},')],
         refused="DEFAULT_VARIANT='tuned_cosine' is not a variant"),
    Edit("a schedule length", [("lr_warmup_fraction: float = 1 / 12", "lr_warmup_fraction: float = 0.25")],
         checks=[config_value("lr_warmup_fraction", 0.25), lr_warms_up_over(10)]),
    Edit("an impossible value", [(CONFIG_LINE["concept_k"], CONFIG_LINE["concept_k"].replace("= 10", "= -1"))],
         refused="concept_k=-1 must not be negative"),
]


@pytest.fixture(scope="module")
def shared(tiny_gemma2, tmp_path_factory):
    """One language model for every edit (loading it is not what is tested) and one cache."""
    loaded = {}
    original = experiment_run.load_language_model

    def load_once(preset, cache_dir, location):
        if preset.model_name not in loaded:
            loaded[preset.model_name] = original(preset, cache_dir, location)
        return loaded[preset.model_name]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment_run, "load_language_model", load_once)
        yield {"text": tiny_gemma2["text"], "cache": tmp_path_factory.mktemp("cache"), "lm": loaded}


def edited_experiment(edit: Edit, folder: Path):
    """The edited copy of experiment.py, loaded as its own module, with the tiny setting."""
    text = (REPO / "experiment.py").read_text()
    for old, new in edit.replacements:
        assert text.count(old) == 1, f"the edit '{edit.name}' expects {old!r} once in experiment.py"
        text = text.replace(old, new)
    path = folder / "experiment.py"
    path.write_text(text)
    name = f"experiment_edit_{abs(hash(edit.name))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    module.SETTING_SHRINK["tiny"] = TINY_SHRINK
    return module


def run_edited(edit: Edit, shared: dict, folder: Path):
    """`python experiment.py --out_dir=folder/run_1` with the edited copy; (exit code, module)."""
    module = edited_experiment(edit, folder)
    env = tiny_environment(shared["text"], shared["cache"])
    env = replace(env, preset=replace(env.preset, name="tiny"), evaluations=())
    return module.main([f"--out_dir={folder / 'run_1'}"], environment=env), module, env


@pytest.mark.parametrize("edit", EDITS, ids=[edit.name for edit in EDITS])
def test_an_edit_reaches_the_run_or_stops_it_with_one_line(edit, shared, tmp_path, capsys):
    code, module, env = run_edited(edit, shared, tmp_path)
    folder = tmp_path / "run_1"
    out, err = capsys.readouterr()
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if edit.refused:
        assert code == 2, f"exit {code}; stderr ends: {err[-800:]}"
        assert last.startswith("error: ") and edit.refused in last, last
        assert not (folder / "training_log.jsonl").exists()  # stopped before training
        assert "[model] loaded" not in out, "refused only after the model loaded"  # in seconds
        return
    assert code == 0, f"exit {code}; stderr ends: {err[-800:]}"
    config = json.loads((folder / "config.json").read_text())
    training = json.loads((folder / "final_info.json").read_text())["training"]["means"]
    used = config["config"]
    data = prepare_activations(shared["lm"][env.preset.model_name], env.preset, used["training_tokens"],
                               used["heldout_tokens"], shared["cache"], used["batch_size"], used["seed"])
    run = Finished(folder, out, config, read_training_log(folder / "training_log.jsonl"), training,
                   module, data.heldout)
    for check in edit.checks:
        check(run)
    if plain_autograd_trained_the_gain not in edit.checks:  # the kernels fit every other edit
        assert training["plain_autograd"] == 0.0
    # every value the run used is experiment.py's, or printed at start with why it differs
    written = module.Config()
    said = config["changed_from_experiment_py"]
    for name, value in used.items():
        if json.loads(json.dumps(getattr(written, name))) != value and name != "variant":
            assert any(line.startswith(f"{name} ") for line in said), f"{name} differs silently"
    # the saved SAE reloads and reproduces the recorded held-out figures
    sae = module.HierarchicalSAE.load(folder / "sae")
    assert json.loads(json.dumps(sae.config_record)) == used  # the Config it was built from
    stats = heldout_statistics(sae, data.heldout)
    for key in ("explained_variance", "l0_base", "l0_concept"):
        assert stats[key] == pytest.approx(training[key], rel=1e-5, abs=1e-8), key


def test_a_note_under_run_1_and_a_new_plot_label_reach_the_run_and_the_figures(shared, tmp_path, capsys):
    """The coder's two other habits: its own notes under `## Run 1:` (kept whole, the harness
    writes a block of its own) and a `labels` entry in plot.py (the figures use it)."""
    import subprocess

    note = "## Run 1: a larger concept init\nI expect more concepts alive; my own words.\n"
    (tmp_path / "notes.txt").write_text(note)
    code, _, _ = run_edited(Edit("no edit", []), shared, tmp_path)
    assert code == 0, capsys.readouterr().err[-800:]
    notes = (tmp_path / "notes.txt").read_text()
    assert notes.startswith(note) and "harness block run_1 begin" in notes
    plot = (REPO / "plot.py").read_text()
    old = 'labels = {\n    "run_0": "Baseline (vanilla ReLU SAE)",\n'
    assert plot.count(old) == 1
    (tmp_path / "plot.py").write_text(plot.replace(old, old + '    "run_1": "My bigger init",\n'))
    result = subprocess.run([sys.executable, "plot.py", "--out_dir=plots"], cwd=tmp_path,
                            capture_output=True, text=True, env={**__import__("os").environ,
                                                                 "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-800:]
    assert "My bigger init" in result.stdout and (tmp_path / "plots" / "training.png").is_file()


def test_the_rehearsal_before_the_model_loads_does_not_change_the_run(shared, tmp_path, capsys,
                                                                      monkeypatch):
    """rehearse_training (two steps on random rows, sae_checks.py) leaks nothing into the run
    (RNG, kernel mode, Config): its weights are bitwise those it gives without the rehearsal."""
    code, module, env = run_edited(Edit("no edit", []), shared, tmp_path)
    assert code == 0, capsys.readouterr().err[-800:]
    calls = []
    monkeypatch.setattr(module, "rehearse_training", lambda *args: calls.append(args))
    code = module.main([f"--out_dir={tmp_path / 'run_2'}"], environment=env)
    assert code == 0 and len(calls) == 1, capsys.readouterr().err[-800:]
    with_rehearsal, without = (module.HierarchicalSAE.load(tmp_path / run / "sae").state_dict()
                               for run in ("run_1", "run_2"))
    for name, tensor in with_rehearsal.items():
        assert torch.equal(tensor, without[name]), f"{name} differs after the rehearsal"

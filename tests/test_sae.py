"""The SAE and its schedules, held to the specification in DESIGN 3."""

import json
import math

import pytest
import torch

import experiment as E
from saes import hierarchical_sae


def make_sae(d=32, n_base=64, k=3, **kwargs):
    return hierarchical_sae(d, n_base, n_base // 4, k, model_name="google/gemma-2-2b", hook_layer=1,
                             context_size=64, **kwargs)


def test_topk_keeps_exactly_k_concepts_per_token():
    sae = make_sae(init_scale_concept=1.0)
    x = torch.randn(200, 32) * 3
    out = sae.forward_levels(x)
    assert out.z2_indices.shape == (200, 3)
    assert all(len(set(row.tolist())) == 3 for row in out.z2_indices)  # k distinct latents
    z2 = sae.encode(x)[:, sae.n_base:]
    active = (z2 > 0).sum(-1)
    assert active.max().item() <= 3
    pre = torch.relu(out.z1 @ sae.W_enc2 + sae.b_enc2)
    enough = (pre > 0).sum(-1) >= 3
    assert enough.any()
    assert (active[enough] == 3).all()  # exactly k wherever k pre-activations are positive
    # the kept ones are the largest
    kth = pre.topk(3, dim=-1).values[:, -1:]
    assert torch.all((z2 > 0) <= (pre >= kth))


def test_concept_level_reads_base_latents():
    sae = make_sae(init_scale_concept=1.0)
    x = torch.randn(10, 32)
    out = sae.forward_levels(x)
    expected = torch.relu(out.z1 @ sae.W_enc2 + sae.b_enc2).topk(3, dim=-1).values
    assert torch.allclose(out.z2_values.sort(-1).values, expected.sort(-1).values, atol=1e-6)


def test_reconstruction_uses_both_decoders():
    sae = make_sae(init_scale_concept=1.0)
    x = torch.randn(7, 32)
    latents = sae.encode(x)
    z1, z2 = latents[:, :sae.n_base], latents[:, sae.n_base:]
    expected = z1 @ sae.W_dec1 + z2 @ sae.W_dec2 + sae.b_dec
    assert torch.allclose(sae.forward_levels(x).x_hat, expected, atol=1e-5)
    assert torch.allclose(sae(x), expected, atol=1e-5)


@pytest.mark.parametrize("step,fraction", [(0, 0.0), (2500, 0.5), (5000, 1.0), (9000, 1.0)])
def test_lw2_schedule_equals_closed_form(step, fraction):
    lo, hi, T = 0.001, 0.12, 5000
    expected = lo + (hi - lo) * (1 - math.cos(math.pi * min(step, T) / T)) / 2
    assert E.cosine_ramp(step, lo, hi, T) == pytest.approx(expected, abs=1e-12)
    assert E.cosine_ramp(step, lo, hi, T) == pytest.approx(lo + (hi - lo) * fraction, abs=1e-12)


def schedule(steps=12_000, **changes):
    cfg = E.Config(training_tokens=steps * 4096, batch_size=4096, **changes)
    return E.StepSchedule(cfg)


def test_warm_restarts_happen_at_the_configured_steps():
    s = schedule(lr_schedule="cosine_restarts", lr_warmup_fraction=1000 / 12_000,
                 lr_restart_period_fraction=2000 / 12_000, lr_restart_mult=2.0, lr_min_ratio=0.1)
    assert s.total_steps == 12_000
    assert s.restart_steps() == [3000, 7000]  # warm-up 1000, then periods 2000 and 4000
    for r in s.restart_steps():
        assert s.lr_factor(r) == pytest.approx(1.0)  # back at the peak
        assert s.lr_factor(r - 1) < 0.11  # just before: near eta_min
    assert s.lr_factor(0) == pytest.approx(1 / 1000)
    assert s.lr_factor(999) == pytest.approx(1.0)
    assert s.lr_factor(1000 + 1000) == pytest.approx(0.1 + 0.9 * 0.5)  # half a period


@pytest.mark.parametrize("steps", [976, 1200, 24_414])
def test_schedule_lengths_are_the_fractions_of_the_run_they_say(steps):
    s = schedule(steps=steps)
    cfg = s.cfg
    assert s.total_steps == steps
    assert s.warmup == round(cfg.lr_warmup_fraction * steps)
    assert s.weight_l1_concept_ramp == round(cfg.weight_l1_concept_ramp_fraction * steps)
    assert s.restart_period == round(cfg.lr_restart_period_fraction * steps)
    assert s.weight_l1_concept_coef(s.weight_l1_concept_ramp) == pytest.approx(cfg.weight_l1_concept_max)  # the ramp completes inside the run
    assert s.weight_l1_concept_ramp < s.total_steps
    assert s.lr_factor(s.warmup - 1) == pytest.approx(1.0)  # the warm-up ends where it says
    assert s.lr_factor(s.warmup - 2) < 1.0


def test_constant_and_single_cosine_schedules():
    s = schedule(lr_schedule="constant")
    assert s.lr_factor(5000) == 1.0 and s.restart_steps() == []
    s = schedule(lr_schedule="cosine", lr_min_ratio=0.0)
    assert s.lr_factor(s.total_steps - 1) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("base_init,expected", [
    ("xavier_normal", lambda d, n: math.sqrt(2 / (d + n))),
    ("dictionary_learning", lambda d, n: 0.1 / math.sqrt(d)),
])
def test_init_standard_deviations_match_per_level(base_init, expected):
    d, n_base = 256, 2048
    sae = hierarchical_sae(d, n_base, n_base // 4, 10, model_name="m", hook_layer=0, context_size=8,
                            base_init=base_init, init_scale_base=1.0, init_scale_concept=0.002)
    assert sae.W_enc1.std().item() == pytest.approx(expected(d, n_base), rel=0.02)
    assert sae.W_enc2.std().item() == pytest.approx(0.002, rel=0.02)
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(n_base + n_base // 4), atol=1e-5)
    sae2 = hierarchical_sae(d, n_base, n_base // 4, 10, model_name="m", hook_layer=0, context_size=8,
                             base_init=base_init, init_scale_base=3.0, init_scale_concept=0.002)
    assert sae2.W_enc1.std().item() == pytest.approx(3 * expected(d, n_base), rel=0.02)


def test_decoder_rows_stay_unit_norm_after_steps():
    cfg = E.Config(n_base=64, concept_k=3, batch_size=128, training_tokens=128 * 20,
                   lr=1e-2, lr_warmup_fraction=1 / 20)
    sae = hierarchical_sae(32, 64, 16, 3, model_name="m", hook_layer=0, context_size=8,
                            init_scale_concept=0.5)
    trainer = E.HierarchicalTrainer(sae, cfg, torch.randn(128, 32) * 2)
    for step in range(20):
        trainer.update(step, torch.randn(128, 32) * 2)
    norms = sae.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    from sae_bench.sae_bench_utils.general_utils import check_decoder_norms
    assert check_decoder_norms(sae.W_dec.data)


def test_folding_the_input_scale_makes_the_sae_read_raw_activations():
    sae = make_sae(init_scale_concept=1.0)
    with torch.no_grad():
        for b in (sae.b_enc1, sae.b_enc2, sae.b_dec):
            b.normal_()
    x = torch.randn(50, 32)
    before = sae.forward_levels(x)
    c = 37.5
    sae.fold_input_scale_(c)
    after = sae.forward_levels(x * c)
    assert torch.allclose(after.x_hat, before.x_hat * c, rtol=1e-4, atol=1e-3)
    assert torch.equal(after.z2_indices.sort(-1).values, before.z2_indices.sort(-1).values)
    assert torch.allclose(after.z1, before.z1 * c, rtol=1e-4, atol=1e-3)


def test_baseline_variant_has_no_concept_level():
    cfg = E.make_config("baseline", "embedded")
    assert cfg.n_concept == 0
    sae = hierarchical_sae(32, 64, 0, 0, model_name="m", hook_layer=0, context_size=8)
    x = torch.randn(5, 32)
    assert sae.encode(x).shape == (5, 64)
    assert sae.W_dec.shape == (64, 32)


@pytest.mark.parametrize("changes,fragment", [
    (dict(concept_k=600), "exceeds"),
    (dict(l1_base=-1.0), "must not be negative"),
    (dict(n_base=2050), "not divisible"),
    (dict(batch_size=10**9), "exceeds training_tokens"),
    (dict(lr_schedule="linear"), "lr_schedule"),
])
def test_impossible_configurations_are_refused_with_a_reason(changes, fragment):
    from dataclasses import replace
    from sae_harness.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=fragment):  # Config refuses it when it is made
        replace(E.make_config("tuned_cosine", "embedded"), **changes)


def test_config_checks_hold_when_experiment_py_runs_under_another_module_name():
    """`python -m cProfile experiment.py` (or runpy) defines Config in a module that sys.modules
    does not name as Config.__module__ says; its Literal annotations still resolve."""
    import runpy

    from sae_harness.errors import ConfigurationError

    module = runpy.run_path(str(E.__file__), run_name="not_in_sys_modules")
    assert module["make_config"]("tuned_cosine", "embedded").lr_schedule == "cosine_restarts"
    with pytest.raises(ConfigurationError, match="lr_schedule"):
        module["make_config"]("tuned_cosine", "embedded", overrides=dict(lr_schedule="linear"))


def test_unknown_variant_is_refused():
    from sae_harness.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="EXPERIMENT_VARIANT='nope'"):
        E.make_config("nope", "embedded")


def test_loss_terms_equal_their_documented_formulas():
    """Config's comment block defines each term; the trainer computes exactly those. As written
    (AS_WRITTEN: L1 on TopK, no aids) the total is the idea's objective."""
    cfg = E.Config(n_base=64, concept_k=3, batch_size=32, training_tokens=32 * 10,
                   matmul_dtype="float32", **E.AS_WRITTEN)
    sae = make_sae(d=16, n_base=64, k=3, init_scale_concept=0.5)
    x = torch.randn(32, 16) * 2 + 1
    trainer = E.HierarchicalTrainer(sae, cfg, x)
    xs = x / trainer.input_scale
    assert trainer.input_scale == pytest.approx(math.sqrt(x.pow(2).sum(-1).mean().item() / 16))
    s = trainer.input_std
    assert s == pytest.approx(math.sqrt((xs - xs.mean(0)).pow(2).sum(-1).mean().item() / 16))
    terms, weighted, _, _ = trainer.loss_terms(xs, step=7)
    z = sae.encode(xs)
    z1, z2 = z[:, :64], z[:, 64:]
    x_hat = z1 @ sae.W_dec1 + z2 @ sae.W_dec2 + sae.b_dec
    expected = {
        "reconstruction": (xs - x_hat).pow(2).sum(-1).mean() / (16 * s * s),
        "l1_base": z1.abs().sum(-1).mean() / (4 * s),
        "l1_concept": z2.abs().sum(-1).mean() / (4 * s),
        "weight_l1_base": sae.W_enc1.abs().sum(0).mean() / 4,
        "weight_l1_concept": sae.W_enc2.abs().sum(0).mean() / 8,
        "l0_base": (z1 > 0).sum(-1).float().mean(),
        "l0_concept": (z2 > 0).sum(-1).float().mean(),
    }
    for name, value in expected.items():
        assert getattr(terms, name).item() == pytest.approx(value.item(), rel=1e-5), name
    lw2 = E.cosine_ramp(7, cfg.weight_l1_concept_min, cfg.weight_l1_concept_max, trainer.schedule.weight_l1_concept_ramp)
    total = (expected["reconstruction"] + cfg.l1_base * expected["l1_base"]
             + cfg.l1_concept * expected["l1_concept"] + cfg.weight_l1_base * expected["weight_l1_base"]
             + lw2 * expected["weight_l1_concept"])
    assert terms.total.item() == pytest.approx(total.item(), rel=1e-5)
    assert sum(weighted.values()).item() == pytest.approx(total.item(), rel=1e-5)

    # with the aids: no L1 on TopK, penalties warmed up, the concept-only reconstruction, AuxK
    aided = E.Config(n_base=64, concept_k=3, batch_size=32, training_tokens=32 * 10,
                     matmul_dtype="float32", concept_penalty_warmup_fraction=2.0,
                     concept_recon_coef=0.1, auxk_alpha=1 / 32, auxk_k=4, auxk_dead_tokens=100)
    trainer = E.HierarchicalTrainer(sae, aided, x)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[0, 5, 9]] = True  # three dead concept latents: AuxK may use them all (auxk_k 4)
    trainer.firing_concept.load_state_dict(dead.float() * 1000)
    terms, weighted, _, _ = trainer.loss_terms(xs, step=7)
    warm = 7 / trainer.schedule.penalty_warmup
    concept_only = (xs - z2 @ sae.W_dec2 - sae.b_dec).pow(2).sum(-1).mean() / (16 * s * s)
    assert terms.concept_reconstruction.item() == pytest.approx(concept_only.item(), rel=1e-5)
    pre = (z1 @ sae.W_enc2 + sae.b_enc2).detach()
    chosen = pre.masked_fill(~dead, float("-inf")).topk(3, dim=-1).indices
    z_aux = torch.zeros_like(pre).scatter(1, chosen, torch.relu(pre.gather(1, chosen)))
    error = (xs - x_hat).detach()
    auxk = (error - z_aux @ sae.W_dec2).pow(2).sum(-1).mean() / (error - error.mean(0)).pow(2).sum(-1).mean()
    assert terms.auxk.item() == pytest.approx(auxk.item(), rel=1e-4)
    lw2 = E.cosine_ramp(7, aided.weight_l1_concept_min, aided.weight_l1_concept_max, trainer.schedule.weight_l1_concept_ramp)
    total = (expected["reconstruction"] + aided.l1_base * expected["l1_base"]
             + aided.weight_l1_base * expected["weight_l1_base"] + lw2 * warm * expected["weight_l1_concept"]
             + 0.1 * concept_only + auxk / 32)
    assert terms.total.item() == pytest.approx(total.item(), rel=1e-5)
    assert weighted["l1_concept"] == 0  # the L1 on TopK is off (l1_on_topk=False)


def test_trainer_state_round_trips_and_a_foreign_checkpoint_is_refused_clearly():
    cfg = E.Config(n_base=64, concept_k=3, batch_size=128, training_tokens=128 * 20,
                   lr=1e-2, lr_warmup_fraction=1 / 20, matmul_dtype="float32")

    def trainer():
        torch.manual_seed(0)
        sae = hierarchical_sae(32, 64, 16, 3, model_name="m", hook_layer=0, context_size=8)
        return E.HierarchicalTrainer(sae, cfg, batches[0])

    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(128, 32, generator=g) * 2 + 1 for _ in range(6)]
    straight, resumed = trainer(), trainer()
    for step, x in enumerate(batches):
        straight.update(step, x)
    for step, x in enumerate(batches[:3]):
        resumed.update(step, x)
    state = resumed.state_dict()
    resumed = trainer()
    resumed.load_state_dict(state)
    for step, x in enumerate(batches[3:], start=3):
        resumed.update(step, x)
    assert torch.isfinite(straight.sae.W_enc1).all()
    assert all(torch.equal(a, b) for a, b in zip(straight.sae.state_dict().values(),
                                                 resumed.sae.state_dict().values()))
    assert torch.equal(straight.firing_base.state_dict(), resumed.firing_base.state_dict())
    old_format = {k: v for k, v in state.items() if not k.startswith("firing_")}
    with pytest.raises(E.ConfigurationError, match="firing_base.*EXPERIMENT_OVERWRITE=1"):
        trainer().load_state_dict(old_format)


def test_batchtopk_concepts_average_k_over_the_batch_and_a_learnt_threshold_serves_after():
    """concept_selection='batchtopk': in training the k x B largest positive pre-activations of
    the batch (a varying number a token); the trainer keeps the running smallest chosen value;
    in eval mode (after training) the concepts above that threshold fire, whatever the batch."""
    sae = make_sae(init_scale_concept=1.0, concept_selection="batchtopk", concept_balance_rate=0.0)
    x = torch.randn(200, 32) * 3
    out = sae.forward_levels(x)
    per_token = (out.z2_values > 0).sum(-1)
    assert per_token.sum() == 3 * 200 and per_token.min() < per_token.max()
    pre = torch.relu(out.z1 @ sae.W_enc2 + sae.b_enc2)
    kth = pre.flatten().topk(3 * 200).values[-1]
    z2 = torch.zeros_like(pre).scatter_add(1, out.z2_indices, out.z2_values)
    assert torch.equal(z2 > 0, pre >= kth)  # exactly the batch's largest
    torch.testing.assert_close(z2[z2 > 0], pre[z2 > 0])

    cfg = E.Config(n_base=64, concept_k=3, batch_size=200, training_tokens=200 * 5,
                   matmul_dtype="float32", concept_selection="batchtopk", concept_balance_rate=0.0,
                   concept_threshold_decay=0.5)
    trainer = E.HierarchicalTrainer(sae, cfg, x)
    assert sae.concept_threshold < 0  # not learnt yet
    smallest = []
    for step in range(3):
        with torch.no_grad():
            chosen = sae.forward_levels(x / trainer.input_scale).z2_values
        smallest.append(chosen[chosen > 0].min())
        trainer.update(step, x)
    # the trainer took the smallest chosen value of each step's forward, before that step's update
    assert sae.concept_threshold.item() == pytest.approx(
        (0.5 * (0.5 * smallest[0] + 0.5 * smallest[1]) + 0.5 * smallest[2]).item(), rel=1e-5)
    sae.eval()
    one_token = x[:1] / trainer.input_scale
    out = sae.forward_levels(one_token)
    pre = out.z1 @ sae.W_enc2 + sae.b_enc2
    fired = torch.zeros_like(pre).scatter_add(1, out.z2_indices, out.z2_values) > 0
    assert torch.equal(fired, pre > sae.concept_threshold)


def test_the_parent_child_overlap_is_the_mean_squared_cosine_of_co_firing_decoders():
    W_dec1 = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    W_dec2 = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1)
    z1 = torch.tensor([[1.0, 0, 2.0, 0, 0, 0], [0, 0, 0, 0, 0, 3.0]])
    out = E.SAEOutput(None, z1, torch.tensor([[1.0, 0.0], [2.0, 5.0]]), torch.tensor([[0, 1], [1, 2]]), None)
    # token 0: concept 0 (concept 1's slot is empty) with base 0 and 2; token 1: concepts 1, 2 with base 5
    pairs = [((W_dec2[0] @ W_dec1[0]) ** 2 + (W_dec2[0] @ W_dec1[2]) ** 2) / 2,
             (W_dec2[1] @ W_dec1[5]) ** 2, (W_dec2[2] @ W_dec1[5]) ** 2]
    expected = sum(pairs) / 3
    assert E.co_firing_overlap(out, W_dec1, W_dec2).item() == pytest.approx(expected.item(), rel=1e-6)
    # and the variant trains it down: its gradient reaches both decoders
    W1, W2 = W_dec1.clone().requires_grad_(), W_dec2.clone().requires_grad_()
    E.co_firing_overlap(out, W1, W2).backward()
    assert W1.grad.abs().sum() > 0 and W2.grad.abs().sum() > 0


def test_a_finished_run_is_reused_for_its_configuration_and_one_that_predates_a_new_field(tmp_path):
    import json
    from dataclasses import asdict

    from sae_harness.records.run_directory import holds_finished_run, json_round_trip

    cfg = E.make_config("tuned_cosine", "embedded")
    record = json_round_trip(asdict(cfg))
    (tmp_path / "final_info.json").write_text(json.dumps({"training": {"means": {}}}))

    def recorded(config):
        (tmp_path / "config.json").write_text(json.dumps({"config": config}))
        return holds_finished_run(tmp_path, ("training",), cfg)

    assert recorded(record)
    assert not recorded({**record, "lr": 3e-4})  # another configuration
    older = {k: v for k, v in record.items() if k != "parent_child_ortho_coef"}
    assert recorded(older)  # trained before the field existed: its default, as now
    assert not holds_finished_run(tmp_path, ("training",), E.make_config("parent_child_orthogonal", "embedded"))
    assert not recorded({**record, "a_field_config_lacks": 1})
    assert not holds_finished_run(tmp_path, ("training", "core"), cfg)  # a group missing


def test_an_sae_saved_before_a_buffer_was_added_loads_with_that_buffer_at_its_initial_value(tmp_path):
    from safetensors.torch import load_file, save_file

    sae = make_sae(init_scale_concept=1.0)
    sae.save(tmp_path / "sae", {})
    path = tmp_path / "sae" / "sae_state.safetensors"
    state = load_file(path)
    del state["concept_threshold"]  # as saved by the code before the BatchTopK threshold
    save_file(state, path)
    loaded = E.HierarchicalSAE.load(tmp_path / "sae")
    assert loaded.concept_threshold.item() == -1.0 and not loaded.training
    x = torch.randn(5, 32)
    torch.testing.assert_close(loaded(x), sae(x))
    del state["W_enc2"]  # a parameter is never made up
    save_file(state, path)
    with pytest.raises(RuntimeError, match="W_enc2"):
        E.HierarchicalSAE.load(tmp_path / "sae")


def test_parent_gated_base_latents_fire_only_with_the_concept_that_reads_them_most():
    sae = make_sae(init_scale_concept=1.0, parent_gated=True)
    ungated = make_sae(init_scale_concept=1.0)
    ungated.load_state_dict(sae.state_dict())
    x = torch.randn(50, 32) * 3
    out, free = sae.forward_levels(x), ungated.forward_levels(x)
    parent = sae.W_enc2.abs().argmax(1)
    fired = torch.zeros(50, sae.n_concept, dtype=torch.bool).scatter(1, out.z2_indices, out.z2_values > 0)
    allowed = fired[:, parent]
    torch.testing.assert_close(out.z1, free.z1 * allowed)  # the children of silent parents are off
    assert torch.equal(out.z2_indices, free.z2_indices)  # the concepts read the ungated base level
    assert (free.z1 > 0).sum() > (out.z1 > 0).sum() > 0
    torch.testing.assert_close(out.x_hat, out.z1 @ sae.W_dec1 + sae.b_dec + out.x_hat_concept)


def test_an_sae_saved_under_the_old_config_names_loads(tmp_path):
    from sae_harness.records.run_directory import RENAMED_CONFIG_FIELDS
    from sae_harness.training.sae_files import STATE_DESCRIPTION

    sae = make_sae(init_scale_concept=1.0)
    sae.save(tmp_path / "sae", {})
    path = tmp_path / "sae" / STATE_DESCRIPTION
    description = json.loads(path.read_text())
    cfg = description["constructor_args"]["cfg"]
    for old, new in RENAMED_CONFIG_FIELDS.items():
        cfg[old] = cfg.pop(new)  # as saved before the rename
    path.write_text(json.dumps(description))
    loaded = E.HierarchicalSAE.load(tmp_path / "sae")
    assert loaded.cfg == sae.cfg
    x = torch.randn(5, 32)
    torch.testing.assert_close(loaded(x), sae(x))

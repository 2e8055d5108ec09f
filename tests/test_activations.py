"""Text -> tokens -> activations -> batches, on the tiny Gemma-2 through the real setting's code."""

import json

import numpy as np
import pytest
import torch

from sae_harness.data import activations as A
from sae_harness.data.language_model import residual_stream
from sae_harness.data.streaming import StreamingBatches, TensorShare, dealt_pieces
from sae_harness.errors import ConfigurationError, DataError


def test_contexts_start_with_bos_and_separate_documents_with_eos(tiny_lm):
    preset, lm = tiny_lm
    tok = lm.tokenizer
    docs = ["alpha beta gamma " * 20, "delta epsilon " * 30, "zeta " * 50]
    rows = list(A.iter_contexts(iter(docs), tok, 16, docs_per_call=2))
    assert rows and all(len(r) == 16 and r[0] == tok.bos_token_id for r in rows)
    stream = [t for r in rows for t in r[1:]]
    expected = []
    for doc in docs:
        expected += tok(doc, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert stream == expected[:len(stream)]
    assert len(expected) - len(stream) < 15  # only the last partial context is dropped


def test_training_activations_equal_transformer_lens_hook_resid_post(tiny_lm):
    """What we train on is what SAE-Bench reads: blocks.L.hook_resid_post (and HF hidden_states)."""
    preset, lm = tiny_lm
    rows = list(A.iter_contexts(iter(["The quick brown fox. " * 40]), lm.tokenizer, 32))[:4]
    tokens = torch.tensor(rows)
    ours = residual_stream(lm.model, tokens, preset.hook_layer)
    _, cache = lm.model.run_with_cache(tokens, names_filter=[preset.hook_name],
                                       stop_at_layer=preset.hook_layer + 1)
    assert torch.equal(ours, cache[preset.hook_name])

    from sae_bench.sae_bench_utils.activation_collection import get_llm_activations
    theirs = get_llm_activations(tokens, lm.model, 2, preset.hook_layer, preset.hook_name,
                                 show_progress=False)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)

    # and TransformerLens matches Hugging Face's model (HF's last hidden state is after the final
    # norm, so compare below the top block)
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(preset.model_name, dtype=torch.float32,
                                              attn_implementation="eager")
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states[1]
    ours0 = residual_stream(lm.model, tokens, 0)
    assert ((ours0 - hidden).norm() / hidden.norm()).item() < 1e-4


def test_the_weights_laid_out_for_the_forward_change_no_output_bit(tiny_lm):
    """The loader stores each block's weights as TransformerLens' forward reads them (no copy in
    every forward); the usual contiguous layout gives bitwise the same logits and residuals."""
    import copy

    from sae_harness.data.language_model import weights_laid_out_for_forward

    preset, lm = tiny_lm
    usual = copy.deepcopy(lm.model)
    for param in usual.parameters():
        param.data = param.data.contiguous()
    n_blocks = len(lm.model.blocks)
    assert weights_laid_out_for_forward(copy.deepcopy(usual)) == 7 * n_blocks  # 3 MLP + 4 attention
    block = lm.model.blocks[0]
    assert block.mlp.W_in.T.is_contiguous() and not block.mlp.W_in.is_contiguous()
    rows = list(A.iter_contexts(iter(["The quick brown fox. " * 40]), lm.tokenizer, 32))[:4]
    tokens = torch.tensor(rows)
    with torch.inference_mode():
        assert torch.equal(lm.model(tokens), usual(tokens))
    assert torch.equal(residual_stream(lm.model, tokens, preset.hook_layer),
                       residual_stream(usual, tokens, preset.hook_layer))


def test_activations_drop_bos_eos_and_pad_positions(tiny_lm):
    preset, lm = tiny_lm
    rows = list(A.iter_contexts(iter(["one two three. " * 10, "four five. " * 10]), lm.tokenizer, 32))
    tokens = torch.tensor(rows)
    chunks = list(A.iter_activations(lm, iter(rows), preset.hook_layer, 8, "cpu"))
    kept = ~torch.isin(tokens, torch.tensor(A.special_token_ids(lm.tokenizer)))
    assert sum(len(c) for c in chunks) == kept.sum().item()
    full = residual_stream(lm.model, tokens, preset.hook_layer)
    assert torch.allclose(torch.cat(chunks), full[kept])


def spec(**changes):
    base = dict(model_name="m", weights_id="w", hook_name="h", text="t", n_heldout=10, n_train=90,
                context_length=8, dtype="bfloat16")
    return A.ActivationSpec(**{**base, **changes})


def write_cache(root, spec_, d=4, seed=0):
    cache = A.ActivationCache(root, spec_)
    data = torch.randn(spec_.n_heldout + spec_.n_train, d, generator=torch.Generator().manual_seed(seed))
    from tqdm import tqdm
    cache.write(iter(data.split(7)), d, tqdm(disable=True))
    return cache, data


def test_cache_round_trips_and_is_keyed_by_everything(tmp_path):
    cache, data = write_cache(tmp_path, spec())
    assert cache.problem() is None
    rows = A._rows_to_torch(cache.open(), "bfloat16").float()
    assert torch.equal(rows, data.to(torch.bfloat16).float())
    for change in (dict(weights_id="other"), dict(n_train=91), dict(context_length=16),
                   dict(hook_name="blocks.2"), dict(text="x"), dict(dtype="float32")):
        assert A.ActivationCache(tmp_path, spec(**change)).problem() == "absent"


@pytest.mark.parametrize("damage,reason", [
    (lambda c: c.data_path.write_bytes(c.data_path.read_bytes()[:-8]), "truncated"),
    (lambda c: c.data_path.write_bytes(b"\x00" * c.data_path.stat().st_size), "corrupted"),
    (lambda c: c.meta_path.unlink(), "interrupted"),
    (lambda c: c.meta_path.write_text("{"), "not valid JSON"),
])
def test_damaged_caches_are_detected_not_used(tmp_path, damage, reason):
    cache, _ = write_cache(tmp_path, spec())
    damage(cache)
    assert reason in cache.problem()


def test_cached_batches_cover_the_cache_once_per_epoch_and_depend_only_on_step(tmp_path):
    rows = np.arange(100 * 2, dtype=np.float32).reshape(100, 2)
    batches = A.CachedBatches(rows, "float32", 10, seed=3)
    seen = torch.cat([batches.batch(s)[:, 0] for s in range(10)])
    assert sorted(seen.tolist()) == list(range(0, 200, 2))  # every row exactly once
    again = A.CachedBatches(rows, "float32", 10, seed=3)
    assert torch.equal(again.batch(7), batches.batch(7))  # resumable at any step
    assert not torch.equal(batches.batch(10), batches.batch(0))  # reshuffled next epoch


def test_streaming_batches_shuffle_and_use_each_row_once():
    rows = torch.arange(1000, dtype=torch.float32).reshape(-1, 1)
    batches = StreamingBatches([TensorShare(rows)], 1, buffer_rows=200, batch_size=20, seed=0, device="cpu")
    out = torch.cat(list(batches.iterate(0, 40)))[:, 0]
    assert len(set(out.tolist())) == 800  # no row twice
    assert not torch.equal(out, out.sort().values)  # shuffled


def shares_of(rows, shares):
    return [TensorShare(rows[share::shares], share) for share in range(shares)]


def test_a_stream_of_two_shares_gives_the_same_global_batches_in_one_process_or_split():
    rows = torch.arange(2000, dtype=torch.float32).reshape(-1, 2)
    whole = StreamingBatches(shares_of(rows, 2), 2, buffer_rows=100, batch_size=20, seed=5, device="cpu")
    together = list(whole.iterate(0, 30))
    halves = [StreamingBatches([source], 2, buffer_rows=100, batch_size=20, seed=5, device="cpu")
              for source in shares_of(rows, 2)]
    apart = [torch.cat(parts) for parts in zip(*(half.iterate(0, 30) for half in halves))]
    assert all(torch.equal(a, b) for a, b in zip(together, apart))
    assert torch.equal(together[3][:10, 0] % 4, torch.zeros(10))  # share 0's rows come first
    assert torch.equal(together[3][10:, 0] % 4, torch.full((10,), 2.0))


def test_a_streamed_source_resumes_from_its_state_to_the_uninterrupted_batches():
    rows = torch.randn(3000, 3)
    straight = list(StreamingBatches(shares_of(rows, 2), 2, 160, 40, seed=1, device="cpu").iterate(0, 60))
    first = StreamingBatches(shares_of(rows, 2), 2, 160, 40, seed=1, device="cpu")
    for _ in zip(range(23), first.iterate(0, 60)):
        pass
    state = first.state_dict()  # between step 22 and step 23, as a checkpoint takes it
    assert [s["share"] for s in state] == [0, 1] and state[0]["rows_read"] < 1500
    again = StreamingBatches(shares_of(rows, 2), 2, 160, 40, seed=1, device="cpu")
    again.first_batch()  # a resumed run sets its input scale first, as train_sae does
    resumed = list(again.iterate(23, 60, resume=state))
    assert len(resumed) == 37 and all(torch.equal(a, b) for a, b in zip(resumed, straight[23:]))
    # without a state the stream is replayed from its start: the same batches too
    replayed = list(StreamingBatches(shares_of(rows, 2), 2, 160, 40, seed=1, device="cpu").iterate(23, 60))
    assert all(torch.equal(a, b) for a, b in zip(replayed, straight[23:]))
    one_share = StreamingBatches([TensorShare(rows)], 1, 160, 40, seed=1, device="cpu")
    with pytest.raises(ConfigurationError, match="holds 2 shares of the text and this run streams 1"):
        next(one_share.iterate(23, 60, resume=state))


def test_a_share_that_runs_out_stops_the_stream_with_one_line():
    rows = torch.randn(400, 2)
    sources = [TensorShare(rows[:200], 0), TensorShare(rows[200:330], 1)]  # share 1 is short
    batches = StreamingBatches(sources, 2, 40, 20, seed=0, device="cpu")
    with pytest.raises(DataError, match="share 1 of 2's text ran out at step 13"):
        list(batches.iterate(0, 20))


def test_dealt_pieces_split_the_training_contexts_after_the_heldout_ones():
    special = {0}
    contexts = [[0, 1, 2, 3], [0, 4, 5, 0], [0, 6, 7, 8], [0, 9, 10, 11], [0, 12, 0, 13]]
    # content rows per context: 3, 2, 3, 3, 2; 4 held out: context 0 and one row of context 1
    share0 = list(dealt_pieces(iter(contexts), special, 4, 0, 2, limit=100))
    share1 = list(dealt_pieces(iter(contexts), special, 4, 1, 2, limit=100))
    assert [(p.tokens[1], p.first_row, p.skip, p.rows) for p in share0] == [(4, 0, 1, 1), (6, 1, 0, 3), (12, 4, 0, 2)]
    assert [(p.tokens[1], p.first_row, p.skip, p.rows) for p in share1] == [(9, 0, 0, 3)]
    limited = list(dealt_pieces(iter(contexts), special, 4, 0, 2, limit=3))
    assert [p.rows for p in limited] == [1, 2]  # stops at the share's rows


def test_prepare_activations_caches_and_reuses(tiny_lm, tmp_path):
    preset, lm = tiny_lm
    first = A.prepare_activations(lm, preset, n_train=600, n_heldout=100, cache_root=tmp_path,
                                  batch_size=100, seed=0)
    assert not first.cache_hit and first.heldout.shape == (100, lm.model.cfg.d_model)
    second = A.prepare_activations(lm, preset, n_train=600, n_heldout=100, cache_root=tmp_path,
                                   batch_size=100, seed=0)
    assert second.cache_hit and torch.equal(first.heldout, second.heldout)
    assert torch.equal(first.train.batch(3), second.train.batch(3))
    meta = json.loads((first.cache_dir / "meta.json").read_text())
    assert meta["spec"]["weights_id"].startswith("hf-commit:")


def test_with_the_cache_off_the_activations_stream_and_nothing_is_cached(tiny_lm, tmp_path):
    preset, lm = tiny_lm
    cached = A.prepare_activations(lm, preset, n_train=600, n_heldout=100, cache_root=tmp_path / "a",
                                   batch_size=100, seed=0)
    streamed = A.prepare_activations(lm, preset, n_train=600, n_heldout=100, cache_root=tmp_path / "a",
                                     batch_size=100, seed=0, use_cache=False)  # a cache is there
    assert isinstance(streamed.train, StreamingBatches) and streamed.cache_dir is None
    assert not streamed.cache_hit
    assert torch.equal(streamed.heldout, cached.heldout)  # the same held-out tokens either way
    rows = torch.cat(list(streamed.train.iterate(0, 6)))
    assert rows.shape == (600, lm.model.cfg.d_model)
    every_cached_row = torch.cat([cached.train.batch(step) for step in range(6)]).float()
    def in_order(x):
        return x[torch.argsort(x.sum(1))]

    assert torch.equal(in_order(rows), in_order(every_cached_row))  # the cache's rows, each once
    A.prepare_activations(lm, preset, n_train=600, n_heldout=100, cache_root=tmp_path / "b",
                          batch_size=100, seed=0, use_cache=False)
    assert not (tmp_path / "b").exists()  # nothing written


def test_the_activation_cache_choice_is_read_and_checked():
    from sae_harness.data.presets import read_run_environment
    from sae_harness.errors import ConfigurationError

    assert read_run_environment({"EXPERIMENT_PRESET": "embedded"}).activation_cache == "auto"
    chosen = read_run_environment({"EXPERIMENT_PRESET": "embedded", "EXPERIMENT_ACTIVATION_CACHE": "OFF"})
    assert chosen.activation_cache == "off"
    with pytest.raises(ConfigurationError, match="EXPERIMENT_ACTIVATION_CACHE='never' is not one of auto, off"):
        read_run_environment({"EXPERIMENT_PRESET": "embedded", "EXPERIMENT_ACTIVATION_CACHE": "never"})


def test_content_token_count_is_what_packing_yields(tiny_lm):
    preset, lm = tiny_lm
    from sae_harness.data.text_sources import python_docstrings

    docs = python_docstrings()[:60]
    rows = list(A.iter_contexts(iter(docs), lm.tokenizer, 32))
    special = torch.tensor(A.special_token_ids(lm.tokenizer))
    packed = (~torch.isin(torch.tensor(rows), special)).sum().item()
    assert A.content_tokens_in(iter(docs), lm.tokenizer, 32, docs_per_call=7) == packed


def test_a_budget_the_text_cannot_supply_is_refused_and_the_count_is_kept(tiny_lm, tmp_path):
    from sae_harness.errors import ConfigurationError

    preset, lm = tiny_lm
    calls = []

    def tokenizer():
        calls.append(1)
        return lm.tokenizer

    with pytest.raises(ConfigurationError, match=r"holds (\d+) content tokens \(counted\); set "
                                                 r"EXPERIMENT_TOKENS to at most \d+"):
        A.check_token_budget(preset, 10**12, 512, tmp_path, tokenizer, "tiny")
    A.check_token_budget(preset, 1000, 512, tmp_path, tokenizer, "tiny")  # fits: no error
    assert len(calls) == 1  # counted once, then read from the cache
    with pytest.raises(ConfigurationError, match="counted earlier"):
        A.check_token_budget(preset, 10**12, 512, tmp_path, tokenizer, "tiny")


def test_a_streamed_hub_text_is_bounded_without_counting(tmp_path):
    from dataclasses import replace

    from sae_harness.errors import ConfigurationError
    from sae_harness.data.presets import PRESETS

    def no_tokenizer():
        raise AssertionError("the hub bound needs no tokenizer")

    with pytest.raises(ConfigurationError, match="Skylion007/openwebtext text holds 9000000000"):
        A.check_token_budget(PRESETS["real"], 10**15, 65536, tmp_path, no_tokenizer, "x")
    A.check_token_budget(PRESETS["real"], 50_000_000, 65536, tmp_path, no_tokenizer, "x")
    embedded = PRESETS["embedded"]  # below the floor the embedded text is not counted
    A.check_token_budget(replace(embedded), 500_000, 16384, tmp_path, no_tokenizer, "x")


def test_a_text_whose_documents_fill_whole_tokenizer_calls_is_packed(tiny_lm):
    """64 documents, as many as one tokenizer call takes: the last call has none left (it used to
    fail in the tokenizer on the empty list)."""
    preset, lm = tiny_lm
    docs = ["one two three four five six seven"] * 64
    contexts = list(A.iter_contexts(iter(docs), lm.tokenizer, 16, docs_per_call=64))
    assert contexts and all(len(c) == 16 for c in contexts)
    assert A.content_tokens_in(iter(docs), lm.tokenizer, 16, docs_per_call=64) > 0

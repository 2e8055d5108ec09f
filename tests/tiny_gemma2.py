"""A tiny random Gemma-2 saved as `google/gemma-2-2b` in a local Hugging Face hub cache.

The real setting loads `google/gemma-2-2b` through the hub cache; with HF_HOME pointing here and
HF_HUB_OFFLINE=1 the very same code loads this model instead. It is Gemma-2's architecture at
small widths (d_model 256, d_mlp 1024, 8 heads of 32, 4 key-value heads), 2 blocks, random
weights and a 512-token BPE vocabulary trained on Python's docstrings, so that its passes take
milliseconds. TransformerLens takes an official model's dimensions from its own table, not from
the config, so `use_small_widths` puts the fixture's into that table's gemma-2-2b entry; every
path that loads the fixture (build, the test runners in subprocesses) calls it first. A small
local text dataset (jsonl) stands in for OpenWebText.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from sae_harness.data.presets import PRESETS, Preset, RunEnvironment, read_precision
from sae_harness.data.text_sources import python_docstrings

COMMIT = "0256abcdef0123456789abcdef0123456789abcd"
"""The snapshot's commit: part of the model's identity in the harness's cache keys, so it
changes with the widths (a cache of the earlier 2304-wide fixture is never read)."""
VOCAB_SIZE = 512
N_LAYERS = 2
WIDTHS = dict(d_model=256, d_mlp=1024, n_heads=8, d_head=32, n_key_value_heads=4)
"""TransformerLens' names; Gemma-2-2B's are 2304, 9216, 8, 256, 4."""


def use_small_widths() -> None:
    """Make TransformerLens' table entry for google/gemma-2-2b the fixture's widths (idempotent;
    no other model's entry changes). Its loader reads that table, not the saved config."""
    import transformer_lens.loading_from_pretrained as loading

    original = loading.convert_hf_model_config
    if getattr(original, "tiny_widths", False):
        return

    def convert(model_name, **kwargs):
        cfg = original(model_name, **kwargs)
        if cfg.get("original_architecture") == "Gemma2ForCausalLM" and cfg.get("d_model") == 2304:
            cfg = {**cfg, **WIDTHS}
        return cfg

    convert.tiny_widths = True
    convert.original = original
    loading.convert_hf_model_config = convert


def build_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's ids 0, 1, 2, 3
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="right")


def build(root: Path) -> dict[str, Path]:
    """Write the hub cache (root/hf_home) and the text dataset (root/text); return both paths."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    use_small_widths()
    root = Path(root)
    hf_home = root / "hf_home"
    repo = hf_home / "hub" / "models--google--gemma-2-2b"
    snapshot = repo / "snapshots" / COMMIT
    text_dir = root / "text"
    if (snapshot / "model.safetensors").exists() and (text_dir / "train.jsonl").exists():
        return {"hf_home": hf_home, "text": text_dir}
    if repo.exists():  # an earlier fixture (other widths): rebuilt, never mixed
        shutil.rmtree(repo)

    docs = python_docstrings()
    tokenizer = build_tokenizer(docs)
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=VOCAB_SIZE, num_hidden_layers=N_LAYERS, bos_token_id=2,
                          eos_token_id=1, pad_token_id=0, hidden_size=WIDTHS["d_model"],
                          intermediate_size=WIDTHS["d_mlp"], num_attention_heads=WIDTHS["n_heads"],
                          head_dim=WIDTHS["d_head"], num_key_value_heads=WIDTHS["n_key_value_heads"],
                          query_pre_attn_scalar=WIDTHS["d_head"])
    model = Gemma2ForCausalLM(config).to(torch.bfloat16)
    snapshot.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir(exist_ok=True)
    (refs / "main").write_text(COMMIT)

    text_dir.mkdir(parents=True, exist_ok=True)
    with open(text_dir / "train.jsonl", "w") as handle:
        for doc in docs:
            handle.write(json.dumps({"text": doc}) + "\n")
    return {"hf_home": hf_home, "text": text_dir}


def tiny_real_preset(text_dir: Path, **changes) -> Preset:
    """The real preset with only what the tiny fixture needs changed: CPU, 2 blocks, local text,
    and local probing data at test sizes (the hub's datasets are out of reach offline)."""
    return replace(PRESETS["real"], **{
        **dict(device="cpu", model_dtype="float32", n_layers_loaded=N_LAYERS, hook_layer=1,
               text_dataset=str(text_dir), context_length=64, llm_batch_size=8,
               probing_datasets="sae_probes", eval_sizes="tiny"),
        **changes})


def tiny_environment(text_dir: Path, cache_dir: Path, variant: str | None = None,
                     overwrite: bool = False) -> RunEnvironment:
    """What the EXPERIMENT_* variables would give, for a run on the tiny fixture
    (EXPERIMENT_PRECISION is read from the environment, so the suite can be run with it forced)."""
    use_small_widths()
    return RunEnvironment(preset=tiny_real_preset(text_dir), preset_reason="test fixture",
                          variant=variant, training_tokens=None, cache_dir=Path(cache_dir),
                          overwrite=overwrite, precision=read_precision())

#!/usr/bin/env python
"""GPU readiness: the real setting's hot paths at full size, with random weights and no network.

    python bench/gpu_readiness.py          # a CUDA machine: Gemma-2-2B architecture, bf16
    python bench/gpu_readiness.py --toy    # anywhere (CPU): the same code at toy size

1. Activations: Gemma-2-2B's architecture (transformers' Gemma2Config defaults are its sizes)
   with random weights — throughput does not depend on weight values — turned into a
   TransformerLens model exactly as the harness does, then `residual_stream` (early exit at
   layer 12) timed in bf16. Ideal: 2 x (parameters of blocks 0..12) FLOPs per token at the
   device's bf16 matmul rate (~380k tokens/s at 790 TFLOP/s).
2. Training: experiment.py's HierarchicalTrainer (bf16 matmuls) at d_sae 16384 and 65536
   (concept width d_sae/4), batch 4096. Ideal: the dense matmul FLOPs of a step at that rate;
   printed for a plain one-level SAE (10 d n per token: ~2.1M tokens/s at 16k) and for ours
   (plus 6 n_base n_concept per token for the concept encoder that reads the base latents).

3. Streamed torchrun: torchrun with one rank per GPU (NCCL, bf16; 2 gloo ranks at toy size), no
   activation cache: each rank builds the model, streams its share of the text (the embedded
   text, tokenised by a placeholder tokenizer: the words' identity does not change the cost)
   through the harness's StreamingBatches, and trains experiment.py's SAE (d_sae 16384, batch
   4096, 80 steps) with experiment.train_sae under DDP. Prints per rank the model's tokens/s on
   its share, training's global tokens/s with the model in the loop and without its seconds,
   and the peak GPU memory. With one GPU this is one rank (NCCL's several-rank path needs
   several GPUs: one GPU cannot host two NCCL ranks).

Prints measured and ideal figures; asserts nothing. Keeps to one call of a few minutes on an
H200 (most of it building the model, twice: once in 1., once per rank in 3.).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent

PEAK_BF16_FLOPS = 790e12
"""Dense bf16 matmul rate assumed for the ideal figures (an H200/H100, measured ~790 TFLOP/s)."""


def placeholder_tokenizer(folder: Path):
    """A tokenizer for TransformerLens to hold (tokens are generated directly; no download).
    Saved and reloaded because TransformerLens reloads tokenizers by their `name_or_path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                            pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def timed(fn, device: str, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def build_model(args, device: str, dtype: torch.dtype, folder: Path):
    """Gemma-2-2B's architecture up to the hook layer, random weights, as a TransformerLens model
    built exactly as the harness builds one (the tokenizer is a placeholder kept in `folder`)."""
    from transformer_lens import HookedTransformer
    from transformers import Gemma2Config, Gemma2ForCausalLM

    n_blocks = args.layer + 1  # blocks above the hook never run: building them changes nothing
    config = Gemma2Config(num_hidden_layers=n_blocks, vocab_size=args.vocab)
    started = time.perf_counter()
    with torch.device(device):
        hf_model = Gemma2ForCausalLM(config).to(dtype)
    model = HookedTransformer.from_pretrained_no_processing(
        "google/gemma-2-2b", hf_model=hf_model, tokenizer=placeholder_tokenizer(folder),
        dtype=dtype, device=device, first_n_layers=n_blocks)
    del hf_model
    print(f"built Gemma-2-2B architecture ({n_blocks} blocks, random weights) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return model


def activation_throughput(args, device: str, dtype: torch.dtype) -> None:
    from sae_harness.data.language_model import residual_stream

    with tempfile.TemporaryDirectory() as folder:
        model = build_model(args, device, dtype, Path(folder))
    tokens = torch.randint(4, args.vocab, (args.contexts, args.context_length), device=device)
    tokens[:, 0] = 2
    with torch.inference_mode():
        seconds = timed(lambda: residual_stream(model, tokens, args.layer), device, args.repeats)
    block_params = sum(p.numel() for name, p in model.named_parameters() if name.startswith("blocks."))
    ideal = PEAK_BF16_FLOPS / (2 * block_params)
    rate = tokens.numel() / seconds
    print(f"activations at layer {args.layer}: {rate:,.0f} tokens/s ({tokens.numel()} tokens per "
          f"forward); ideal {ideal:,.0f} tokens/s at {PEAK_BF16_FLOPS / 1e12:.0f} TFLOP/s -> {rate / ideal:.0%}")
    if device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    del model


def training_throughput(args, device: str) -> None:

    import experiment as E

    for n_base in args.widths:
        cfg = E.make_config("tuned_cosine", "real", overrides=dict(n_base=n_base, batch_size=args.batch))
        sae = E.HierarchicalSAE(cfg, args.d_model).to(device)
        x = torch.randn(args.batch, args.d_model, device=device)
        trainer = E.HierarchicalTrainer(sae, cfg, x, torch.bfloat16)
        step = iter(range(10**9))
        seconds = timed(lambda: trainer.update(next(step), x), device, args.repeats)
        rate = args.batch / seconds
        plain = PEAK_BF16_FLOPS / (10 * args.d_model * n_base)
        # the concept encoder's TopK gradient touches k of n_concept entries (sae_kernels.py)
        ours = PEAK_BF16_FLOPS / (10 * args.d_model * n_base + 2 * n_base * cfg.n_concept)
        print(f"SAE training d_sae {n_base} (+{cfg.n_concept} concept), batch {args.batch}: "
              f"{rate:,.0f} tokens/s; ideal {ours:,.0f} for this SAE ({rate / ours:.0%}), "
              f"{plain:,.0f} for a plain {n_base}-latent SAE")
        if device == "cuda":
            print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
            torch.cuda.reset_peak_memory_stats()
        del sae, trainer


def streamed_torchrun(args, device: str) -> None:
    """3. The real setting's streamed torchrun path: one rank per GPU (2 gloo ranks on a CPU),
    NCCL, bf16, no cache (bench/gpu_readiness.py --streamed-rank under torchrun)."""
    import os
    import subprocess
    import sys

    ranks = torch.cuda.device_count() if device == "cuda" else 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               str(Path(__file__).resolve()), "--streamed-rank", *(["--toy"] if args.toy else [])]
    print(f"streamed torchrun: {ranks} rank{'s' * (ranks > 1)} ({'NCCL' if device == 'cuda' else 'gloo'})",
          flush=True)
    env = {**os.environ, **({} if device == "cuda" else {"OMP_NUM_THREADS": "1"})}
    subprocess.run(command, check=True, env=env)


def streamed_rank(args, device: str, dtype: torch.dtype) -> None:
    """One rank of 3.: the harness's streamed activations (its share of the embedded text,
    tokenised by a placeholder tokenizer) and experiment.py's training loop under DDP."""
    from dataclasses import replace

    import experiment as E
    from sae_harness.data.activations import prepare_activations
    from sae_harness.data.language_model import LanguageModel
    from sae_harness.data.presets import EMBEDDED_TEXT, PRESETS
    from sae_harness.hardware import distributed
    from sae_harness.records.run_directory import RunDirectory

    world = distributed.start(device)
    if device == "cuda":
        device = f"cuda:{world.local_rank}"
    folder = Path(tempfile.mkdtemp(prefix=f"gpu_readiness_rank{world.rank}_"))
    lm = LanguageModel(build_model(args, device, dtype, folder), "random", "random weights", 0.0)
    preset = replace(PRESETS["real"], text_dataset=EMBEDDED_TEXT, device=device,
                     model_dtype=str(dtype).split(".")[1], hook_layer=args.layer,
                     **(dict(context_length=args.context_length, llm_batch_size=args.contexts)
                        if args.toy else {}))  # else the real setting's contexts and model batch
    n_train = args.batch * args.streamed_steps
    cfg = E.make_config("tuned_cosine", "real", n_train, dict(n_base=args.widths[0], batch_size=args.batch,
                                                              heldout_tokens=args.batch, log_every=10))
    started = time.perf_counter()
    data = prepare_activations(lm, preset, n_train, cfg.heldout_tokens, folder / "cache", args.batch, 0,
                               stream_buffer_rows=args.stream_buffer, use_cache=False,
                               stream_shares=world.world_size)
    run = RunDirectory(Path(distributed.from_main(str(folder / "run"))))
    if world.is_main:
        run.path.mkdir(parents=True, exist_ok=True)
    distributed.barrier()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    training_started = time.perf_counter()  # the model's first fill (first_batch) included
    sae, summary = E.train_sae(cfg, device, data, run, torch.bfloat16 if device.startswith("cuda") else torch.float32)
    training = time.perf_counter() - training_started
    share = data.train.buffers[0].source
    memory = (f"; peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
              if device.startswith("cuda") else "")
    print(f"[rank {world.rank}] streamed: model {share.rows_made / max(share.model_seconds, 1e-9):,.0f} "
          f"tokens/s ({share.rows_made} rows of its share in {share.model_seconds:.1f} s); training "
          f"{summary['tokens'] / training:,.0f} global tokens/s with the model in the loop, "
          f"{summary['tokens'] / max(training - share.model_seconds, 1e-9):,.0f} without its seconds; "
          f"{summary['steps']:.0f} steps of {args.batch} in {training:.0f} s "
          f"({time.perf_counter() - started:.0f} s with the held-out rows){memory}", flush=True)
    distributed.stop()


def parse_arguments(argv=None):
    """The command line, with the sizes of the chosen mode (toy on a CPU, full on CUDA)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", action="store_true", help="CPU, tiny sizes: checks the script runs")
    parser.add_argument("--no-streamed", action="store_true", help="skip 3. (the streamed torchrun run)")
    parser.add_argument("--streamed-rank", action="store_true", help=argparse.SUPPRESS)  # torchrun's ranks
    args = parser.parse_args(argv)
    if args.toy:
        args.layer, args.vocab, args.contexts, args.context_length = 1, 512, 2, 32
        args.widths, args.batch, args.d_model, args.repeats = [256, 512], 64, 2304, 1
        args.streamed_steps, args.stream_buffer = 8, 256
    else:
        args.layer, args.vocab, args.contexts, args.context_length = 12, 256_000, 256, 128
        args.widths, args.batch, args.d_model, args.repeats = [16384, 65536], 4096, 2304, 5
        args.streamed_steps, args.stream_buffer = 80, 1 << 17  # ~330k tokens: the embedded text holds more
    return args


def main(argv=None) -> None:
    args = parse_arguments(argv)
    if args.toy:
        device, dtype = "cpu", torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA GPU; run with --toy to check the script on a CPU")
        device, dtype = "cuda", torch.bfloat16
    if args.streamed_rank:
        return streamed_rank(args, device, dtype)
    print(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu (toy sizes)'}; "
          f"torch {torch.__version__}")
    activation_throughput(args, device, dtype)
    training_throughput(args, device)
    if not args.no_streamed:
        streamed_torchrun(args, device)


if __name__ == "__main__":
    main()

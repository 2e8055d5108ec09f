"""Text -> tokens -> residual-stream activations -> shuffled training batches.

Documents are packed into contexts of `context_length` tokens: each context starts with BOS and
continues a stream in which documents follow each other separated by EOS. Activations at BOS,
EOS and PAD positions are dropped (the BOS position's norm is ~100x the others'), so a token
budget counts content tokens only.

Activations are computed once and kept in an on-disk `ActivationCache`, keyed by everything that
determines them (model weights, layer, text, token counts, context length, special-token policy,
dtype). Later runs with the same key read the cache through a memory map, shuffled across the
whole cache, and never run the language model. A budget too large for the disk (or any budget,
with EXPERIMENT_ACTIVATION_CACHE=off) is streamed instead, through shuffling buffers, without
caching (streaming.py: shares of the text per process, resumable).

The first `n_heldout` content tokens (from the first documents) are held out for evaluation;
training tokens come from the documents after them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sae_harness.data.language_model import LanguageModel, residual_stream
from sae_harness.data.presets import EMBEDDED_TEXT, Preset
from sae_harness.data.text_sources import documents, text_fingerprint
from sae_harness.data.streaming import ModelShare, StreamingBatches
from sae_harness.errors import ConfigurationError, DataError
from sae_harness.hardware import distributed
from sae_harness.hardware.precision import torch_dtype
from sae_harness.records.cache_keys import key_digest
from sae_harness.records.run_directory import atomic_write_json

PACKING_VERSION = 1
"""Bump when packing or filtering changes: it is part of the cache key."""
CACHE_DISK_HEADROOM = 0.9
"""Cache only if the activations fit in this fraction of the free disk space."""


# --------------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------------
def special_token_ids(tokenizer) -> list[int]:
    """Token ids whose activations are dropped: BOS, EOS and PAD."""
    ids = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    return sorted(i for i in ids if i is not None)


def iter_contexts(docs: Iterable[str], tokenizer, context_length: int,
                  docs_per_call: int = 64) -> Iterator[list[int]]:
    """Contexts [BOS, t1, ..., t_{n-1}] cut from the EOS-separated stream of tokenised documents.

    Stops when the documents run out (the last, partial context is dropped).
    """
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no BOS or EOS token; cannot pack contexts")
    body = context_length - 1
    stream: list[int] = []
    batch: list[str] = []

    def flush():  # (a tokenizer fails on an empty list: the text's documents may end a batch)
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"] if batch else []:
            stream.extend(ids)
            stream.append(tokenizer.eos_token_id)
        batch.clear()

    for doc in docs:
        batch.append(doc)
        if len(batch) == docs_per_call:
            flush()
            while len(stream) >= body:
                yield [tokenizer.bos_token_id, *stream[:body]]
                del stream[:body]
    flush()
    while len(stream) >= body:
        yield [tokenizer.bos_token_id, *stream[:body]]
        del stream[:body]


def content_tokens_in(docs: Iterable[str], tokenizer, context_length: int,
                      docs_per_call: int = 256) -> int:
    """The content tokens `iter_contexts` yields from `docs` (full contexts only, separators and
    special tokens dropped), to within the special tokens of one document."""
    body, stream, separators, specials = context_length - 1, 0, [], []
    special = set(special_token_ids(tokenizer))
    batch: list[str] = []

    def flush():
        nonlocal stream
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"] if batch else []:
            stream += len(ids)
            specials.append((stream, sum(1 for i in ids if i in special)))
            separators.append(stream)
            stream += 1
        batch.clear()

    for doc in docs:
        batch.append(doc)
        if len(batch) == docs_per_call:
            flush()
    flush()
    cut = stream // body * body
    return cut - sum(1 for p in separators if p < cut) - sum(n for end, n in specials if end <= cut)


def text_tokens_available(preset: Preset, tokenizer_source, cache_dir: Path, tokenizer_id: str
                          ) -> tuple[int, str] | None:
    """(content tokens the preset's text can supply, how that is known), or None if unknown.

    Embedded and local texts are counted once (~35 s for the embedded text) and the count is
    kept under `cache_dir/text_tokens`; a streamed hub dataset has a known upper bound or none.
    `tokenizer_source()` returns the tokenizer, called only when a count is needed.
    """
    from sae_harness.data.text_sources import HUB_TEXT_TOKENS, text_fingerprint

    if preset.text_dataset != EMBEDDED_TEXT and not Path(preset.text_dataset).exists():
        bound = HUB_TEXT_TOKENS.get(preset.text_dataset)
        return (bound, f"{preset.text_dataset} holds at most about {bound:.3g} tokens") if bound else None
    key = {"text": text_fingerprint(preset), "tokenizer": tokenizer_id,
           "context_length": preset.context_length, "packing_version": PACKING_VERSION}
    path = Path(cache_dir) / "text_tokens" / (key_digest(key) + ".json")
    try:
        return json.loads(path.read_text())["tokens"], "counted earlier"
    except (OSError, ValueError, KeyError):
        pass
    print(f"[activations] counting the tokens of the {preset.text_dataset} text (once)")
    tokens = content_tokens_in(documents(preset, seed=0), tokenizer_source(), preset.context_length)
    atomic_write_json(path, {**key, "tokens": tokens})
    return tokens, "counted"


def check_token_budget(preset: Preset, n_train: int, n_heldout: int, cache_dir: Path,
                       tokenizer_source, tokenizer_id: str) -> None:
    """Refuse, before any model work, a budget the preset's text cannot supply."""
    from sae_harness.data.text_sources import EMBEDDED_TOKENS_FLOOR

    need = n_train + n_heldout
    if preset.text_dataset == EMBEDDED_TEXT and need <= EMBEDDED_TOKENS_FLOOR:
        return
    found = text_tokens_available(preset, tokenizer_source, cache_dir, tokenizer_id)
    if found is not None and need > found[0]:
        raise ConfigurationError(
            f"EXPERIMENT_TOKENS asks for {n_train} training + {n_heldout} held-out tokens, but the "
            f"{preset.text_dataset} text holds {found[0]} content tokens ({found[1]}); set "
            f"EXPERIMENT_TOKENS to at most {max(found[0] - n_heldout, 0)}"
        )


# --------------------------------------------------------------------------------------------
# Activations
# --------------------------------------------------------------------------------------------
def iter_activations(lm: LanguageModel, contexts: Iterator[list[int]], layer: int,
                     batch_contexts: int, device: str) -> Iterator[torch.Tensor]:
    """(n, d) residual-stream activations of the content tokens, batch by batch (model dtype)."""
    skip = torch.tensor(special_token_ids(lm.tokenizer), device=device)
    while True:
        rows = [row for _, row in zip(range(batch_contexts), contexts)]
        if not rows:
            return
        tokens = torch.tensor(rows, dtype=torch.long, device=device)
        acts = residual_stream(lm.model, tokens, layer)
        keep = ~torch.isin(tokens, skip)
        yield acts[keep]


@dataclass(frozen=True)
class ActivationSpec:
    """Everything that determines a set of activations: the cache key."""

    model_name: str
    weights_id: str
    hook_name: str
    text: str
    n_heldout: int
    n_train: int
    context_length: int
    dtype: str
    special_tokens: str = "drop BOS, EOS, PAD"
    packing_version: int = PACKING_VERSION

    def digest(self) -> str:
        return key_digest(self.__dict__)


def _numpy_storage(dtype: str):
    # numpy has no bfloat16: bf16 rows are stored as their raw 16-bit patterns
    return {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}[dtype]


def _rows_to_torch(rows: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(rows))  # a private, writable copy of the (memmap) rows
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def _torch_to_rows(acts: torch.Tensor, dtype: str) -> np.ndarray:
    acts = acts.to(torch_dtype(dtype)).cpu()
    return (acts.view(torch.uint16) if dtype == "bfloat16" else acts).numpy()


def _file_checksum(path: Path) -> str:
    import xxhash

    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


class ActivationCache:
    """Activations on disk: `activations.bin` (rows: held-out first, then train) + `meta.json`.

    `meta.json` is written last and records the key, shape, dtype and an xxh3 checksum of the
    data file; a cache whose data does not match it (truncated, corrupted, half written) is
    reported and rebuilt, never used.
    """

    def __init__(self, root: Path, spec: ActivationSpec):
        self.spec = spec
        self.dir = Path(root) / "activations" / spec.digest()
        self.data_path = self.dir / "activations.bin"
        self.meta_path = self.dir / "meta.json"

    @property
    def n_rows(self) -> int:
        return self.spec.n_heldout + self.spec.n_train

    def nbytes(self, d_model: int) -> int:
        return self.n_rows * d_model * np.dtype(_numpy_storage(self.spec.dtype)).itemsize

    def problem(self) -> str | None:
        """None if the cache is complete and intact, else why it cannot be used."""
        if not self.meta_path.is_file():
            return "absent" if not self.data_path.exists() else "no meta.json (interrupted write)"
        try:
            meta = json.loads(self.meta_path.read_text())
        except ValueError:
            return "meta.json is not valid JSON"
        if meta.get("spec") != self.spec.__dict__:
            return "meta.json describes other activations"
        if not self.data_path.is_file():
            return "activations.bin is missing"
        expected = meta["n_rows"] * meta["d_model"] * np.dtype(_numpy_storage(self.spec.dtype)).itemsize
        size = self.data_path.stat().st_size
        if size != expected:
            return f"activations.bin has {size} bytes, expected {expected} (truncated?)"
        if _file_checksum(self.data_path) != meta["checksum"]:
            return "activations.bin does not match its checksum (corrupted)"
        return None

    def open(self) -> np.memmap:
        meta = json.loads(self.meta_path.read_text())
        return np.memmap(self.data_path, dtype=_numpy_storage(self.spec.dtype), mode="r",
                         shape=(meta["n_rows"], meta["d_model"]))

    def write(self, chunks: Iterator[torch.Tensor], d_model: int, progress: tqdm) -> None:
        """Fill the cache from activation chunks; atomic: data renamed into place, meta last."""
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        tmp = self.dir / "activations.bin.tmp"
        try:
            out = np.memmap(tmp, dtype=_numpy_storage(self.spec.dtype), mode="w+",
                            shape=(self.n_rows, d_model))
            filled = 0
            for chunk in chunks:
                take = min(len(chunk), self.n_rows - filled)
                out[filled:filled + take] = _torch_to_rows(chunk[:take], self.spec.dtype)
                filled += take
                progress.update(take)
                if filled == self.n_rows:
                    break
            if filled < self.n_rows:
                raise DataError(
                    f"the text ran out after {filled} of {self.n_rows} tokens; "
                    "lower EXPERIMENT_TOKENS or use a larger text source"
                )
            out.flush()
            del out
            os.replace(tmp, self.data_path)
            meta = {"spec": self.spec.__dict__, "n_rows": self.n_rows, "d_model": d_model,
                    "checksum": _file_checksum(self.data_path), "created": time.time()}
            atomic_write_json(self.meta_path, meta)
        except OSError as error:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise DataError(
                f"could not write the activation cache in {self.dir} ({error.strerror or error}); "
                f"it needs {self.nbytes(d_model) / 1e9:.1f} GB: free disk space or point "
                "EXPERIMENT_CACHE elsewhere"
            ) from error
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
class CachedBatches:
    """Batches drawn without replacement from a memory-mapped array, reshuffled every epoch.

    Batch `step` depends only on (seed, step), so training can resume at any step.
    """

    def __init__(self, rows: np.ndarray, dtype: str, batch_size: int, seed: int):
        if batch_size > len(rows):
            raise DataError(f"batch size {batch_size} exceeds the {len(rows)} cached training tokens")
        self.rows, self.dtype, self.batch_size, self.seed = rows, dtype, batch_size, seed
        self.steps_per_epoch = len(rows) // batch_size
        self._epoch, self._perm = -1, None
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> CachedBatches:
        """The same batches, of which this source yields only rank's share (the global batch's
        rows rank*B/W .. (rank+1)*B/W): W shards together are the one-process batches. The
        first batch stays whole (it sets the input scale on every rank alike)."""
        if self.batch_size % world_size:
            raise ConfigurationError(f"batch_size={self.batch_size} is not divisible by the "
                                     f"{world_size} processes of the run")
        part = CachedBatches(self.rows, self.dtype, self.batch_size, self.seed)
        part.rank, part.world_size = rank, world_size
        return part

    def batch(self, step: int, whole: bool = False) -> torch.Tensor:
        """Batch `step` (this shard's rows of it, unless `whole`)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.rows), generator=generator).numpy()
            self._epoch = epoch
        picked = np.sort(self._perm[index * self.batch_size:(index + 1) * self.batch_size])
        if self.world_size > 1 and not whole:
            share = self.batch_size // self.world_size
            picked = picked[self.rank * share:(self.rank + 1) * share]
        return _rows_to_torch(self.rows[picked], self.dtype).float()

    def iterate(self, start_step: int, n_steps: int) -> Iterator[torch.Tensor]:
        """Batches start_step..n_steps-1 (a batch depends only on its step)."""
        for step in range(start_step, n_steps):
            yield self.batch(step)

    def first_batch(self) -> torch.Tensor:
        """The first training batch, whole (it is trained on too); used to set the input scale."""
        return self.batch(0, whole=True)


@dataclass
class ActivationData:
    """Held-out activations in memory plus a source of shuffled training batches."""

    heldout: torch.Tensor
    """(n_heldout, d) float32 activations for evaluation (raw scale)."""
    train: CachedBatches | StreamingBatches
    cache_dir: Path | None
    """Where the cache lives (None when streaming)."""
    cache_hit: bool
    collect_seconds: float
    """Seconds spent running the language model for these activations (0 on a cache hit)."""

    @property
    def d_model(self) -> int:
        return self.heldout.shape[1]


def prepare_activations(lm: LanguageModel, preset: Preset, n_train: int, n_heldout: int,
                        cache_root: Path, batch_size: int, seed: int,
                        stream_buffer_rows: int = 1 << 20, use_cache: bool = True,
                        stream_shares: int = 1, stream_extra_rows: int = 0) -> ActivationData:
    """Held-out and training activations for the preset, from the cache when possible.

    `use_cache` False (EXPERIMENT_ACTIVATION_CACHE=off) streams them whatever the disk holds:
    no cache is read or written. A stream is dealt into `stream_shares` shares (streaming.py);
    under torchrun that is the number of processes, and this rank computes its own share; a
    stream holds `stream_extra_rows` more rows than `n_train` (the cache's key never changes)."""
    spec = ActivationSpec(
        model_name=preset.model_name, weights_id=lm.weights_id, hook_name=preset.hook_name,
        text=text_fingerprint(preset), n_heldout=n_heldout, n_train=n_train,
        context_length=preset.context_length, dtype=preset.model_dtype,
    )
    cache = ActivationCache(cache_root, spec)
    d_model = lm.model.cfg.d_model
    if use_cache:
        problem = cache.problem()
        if problem is None:
            print(f"[activations] cache hit: {cache.dir} ({n_heldout} held-out + {n_train} training tokens)")
            return _from_cache(cache, n_heldout, batch_size, seed, cache_hit=True, collect_seconds=0.0)
        if problem != "absent":
            print(f"[activations] cache at {cache.dir} is unusable ({problem}); rebuilding it")

    contexts = iter_contexts(documents(preset, seed=0), lm.tokenizer, preset.context_length)
    chunks = iter_activations(lm, contexts, preset.hook_layer, preset.llm_batch_size, preset.device)
    started = time.time()
    if use_cache:
        cache_root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache_root).free
        if cache.nbytes(d_model) <= CACHE_DISK_HEADROOM * free:
            with tqdm(total=cache.n_rows, unit="tok", unit_scale=True, desc="activations",
                      dynamic_ncols=True) as progress:
                cache.write(chunks, d_model, progress)
            return _from_cache(cache, n_heldout, batch_size, seed, cache_hit=False,
                               collect_seconds=time.time() - started)
        print(f"[activations] {cache.nbytes(d_model) / 1e9:.1f} GB of activations do not fit in "
              f"{free / 1e9:.1f} GB free at {cache_root}; streaming without a cache")
    elif distributed.current().is_main:
        print("[activations] streaming without a cache (EXPERIMENT_ACTIVATION_CACHE=off)")
    return _streamed(lm, preset, n_train + stream_extra_rows, n_heldout, batch_size, seed,
                     stream_buffer_rows, stream_shares, chunks, started)


def _streamed(lm: LanguageModel, preset: Preset, n_train: int, n_heldout: int, batch_size: int,
              seed: int, buffer_rows: int, shares: int, chunks: Iterator[torch.Tensor],
              started: float) -> ActivationData:
    """Held-out rows (rank 0) and the streamed batches of this process's shares."""
    sources = model_shares(lm, preset, n_heldout, shares, n_train // shares)
    heldout = streamed_heldout(lm, chunks, n_heldout)
    train = StreamingBatches(sources, shares, buffer_rows, batch_size, seed, preset.device)
    return ActivationData(heldout, train, None, cache_hit=False, collect_seconds=time.time() - started)


def model_shares(lm: LanguageModel, preset: Preset, n_heldout: int, shares: int, limit: int
                 ) -> list[ModelShare]:
    """The shares of the streamed text this process computes, `limit` rows each: all of them in
    one process, share r on rank r under torchrun (which needs one share per process)."""
    world = distributed.current()
    if world.distributed and shares != world.world_size:
        raise ConfigurationError(f"EXPERIMENT_STREAM_SHARES={shares} under torchrun with "
                                 f"{world.world_size} processes: a streamed run deals its text "
                                 "into one share per process; leave it unset")
    owned = [world.rank] if world.distributed else list(range(shares))
    return [ModelShare(lm, preset, lambda: iter_contexts(documents(preset, seed=0), lm.tokenizer,
                                                         preset.context_length),
                       special_token_ids(lm.tokenizer), n_heldout, share, shares, limit)
            for share in owned]


def streamed_heldout(lm: LanguageModel, chunks: Iterator[torch.Tensor], n_heldout: int) -> torch.Tensor:
    """The held-out rows (float32, CPU) from the first activation chunks, on rank 0; elsewhere
    none (rank 0 alone evaluates; the model never runs on the held-out text there)."""
    if distributed.current().is_main:
        return first_rows(chunks, n_heldout).float().cpu()
    return torch.empty(0, lm.model.cfg.d_model)


def _from_cache(cache: ActivationCache, n_heldout: int, batch_size: int, seed: int,
                cache_hit: bool, collect_seconds: float) -> ActivationData:
    """The held-out rows in memory and batches drawn from the rest, from a complete cache."""
    rows = cache.open()
    heldout = _rows_to_torch(rows[:n_heldout], cache.spec.dtype).float()
    return ActivationData(heldout, CachedBatches(rows[n_heldout:], cache.spec.dtype, batch_size, seed),
                          cache.dir, cache_hit=cache_hit, collect_seconds=collect_seconds)


def first_rows(chunks: Iterator[torch.Tensor], n: int) -> torch.Tensor:
    """The first n rows of a chunk stream (the held-out rows)."""
    parts, have = [], 0
    for chunk in chunks:
        parts.append(chunk[: n - have])
        have += len(parts[-1])
        if have == n:
            return torch.cat(parts)
    raise DataError(f"the text ran out after {have} of {n} held-out tokens; lower the held-out size")

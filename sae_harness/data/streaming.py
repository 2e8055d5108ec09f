"""Streamed training activations: the language model runs during training (no cache).

The training text (the contexts after the held-out ones) is dealt into S *shares*, context by
context: training context j goes to share j % S (the rows of the held-out's last context that
the held-out did not take come first in share 0). Every row has an id: its index in its share.
Each share has its own shuffling buffer and generator (seed + 1_000_003 * share), and a global
batch of B rows is share 0's B/S rows, then share 1's, and so on; the first batch (which sets
the input scale) is made the same way from each buffer's first fill.

    one process                 computes every share itself; S = EXPERIMENT_STREAM_SHARES, 1 by
                                default (S = 1 reads the rows in the activation cache's order)
    torchrun, W processes       S = W: rank r runs the model on share r's contexts only, and
                                trains on its B/W rows; the first batch is gathered from every rank

so a W-rank run trains on the batches of a one-process run with EXPERIMENT_STREAM_SHARES=W.
Every rank tokenises the whole text to deal the contexts (cheap next to the model); the model
runs once per context, on one rank. The held-out rows are computed by rank 0 only.

A share whose text runs out before the last step stops the run: with one process at once, under
torchrun every rank at the same step (one flag all-reduced per step), each with one line.

Resume (`state_dict` / `iterate(resume=...)`): a checkpoint holds, per share, the ids of the rows
in its buffer, in buffer order, how many rows it had read, and its generator's state. A resumed
run runs the model again on the contexts that hold those rows (about one buffer's worth of
text), then reads on from where the share had stopped. The batches after the resume are then
those of the uninterrupted run, row for row and in the same order; the activations are
recomputed, so they equal the first computation up to the float reduction order of the
model's kernels (the model is batched differently), and the weights equal the uninterrupted
run's within that tolerance (tests/test_distributed.py). A checkpoint without stream state (written
before this) is resumed by replaying the stream from its start.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from sae_harness.data.language_model import LanguageModel, residual_stream
from sae_harness.data.presets import Preset
from sae_harness.errors import ConfigurationError, DataError
from sae_harness.hardware import distributed

SHARE_SEED_STRIDE = 1_000_003


# --------------------------------------------------------------------------------------------
# A share of the text and its rows
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """One context of a share: its tokens and which of its content rows the share takes."""

    tokens: list[int]
    first_row: int
    """The id (index in the share) of the first row it gives."""
    skip: int
    """Content rows at its start that are not the share's (the held-out's)."""
    rows: int
    """Content rows it gives the share."""


def dealt_pieces(contexts: Iterator[list[int]], special: set[int], n_heldout: int, share: int,
                 shares: int, limit: int) -> Iterator[Piece]:
    """The pieces of `share` of `shares`, in order, up to `limit` rows (module docstring)."""
    need, index, row = n_heldout, 0, 0
    for tokens in contexts:
        if row >= limit:
            return
        content = sum(1 for t in tokens if t not in special)
        if need > 0:
            used = min(need, content)
            need -= used
            if need == 0 and used < content and share == 0:  # the held-out's last context
                yield Piece(tokens, row, used, min(content - used, limit - row))
                row += content - used
            continue
        if index % shares == share and content:
            yield Piece(tokens, row, 0, min(content, limit - row))
            row += content
        index += 1


class ModelShare:
    """Share `share` of `shares` of the training text, as rows of the language model's
    residual stream, computed when read."""

    def __init__(self, lm: LanguageModel, preset: Preset, contexts: Callable[[], Iterator[list[int]]],
                 special: list[int], n_heldout: int, share: int, shares: int, limit: int):
        self.lm, self.preset, self.share, self.shares, self.limit = lm, preset, share, shares, limit
        self._contexts, self.special, self.n_heldout = contexts, special, n_heldout
        """`contexts()` packs the text from its start (activations.iter_contexts); `special` are
        the token ids whose rows are dropped."""
        self.rows_made, self.model_seconds = 0, 0.0
        """Rows the model has computed for this share, and the seconds it took (device synced)."""

    def pieces(self) -> Iterator[Piece]:
        return dealt_pieces(self._contexts(), set(self.special), self.n_heldout, self.share,
                            self.shares, self.limit)

    def _rows_of(self, pieces: list[Piece]) -> torch.Tensor:
        """The share's rows of these pieces, in order (one batch of the model)."""
        started, device = time.perf_counter(), self.preset.device
        tokens = torch.tensor([p.tokens for p in pieces], dtype=torch.long, device=device)
        acts = residual_stream(self.lm.model, tokens, self.preset.hook_layer)
        keep = ~torch.isin(tokens, torch.tensor(self.special, device=device))
        rows = torch.cat([acts[i][keep[i]][p.skip:p.skip + p.rows] for i, p in enumerate(pieces)])
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        self.rows_made += len(rows)
        self.model_seconds += time.perf_counter() - started
        return rows

    def read(self, start_row: int) -> Iterator[torch.Tensor]:
        """The rows from id `start_row` on, in chunks of one model batch."""
        pieces = (p for p in self.pieces() if p.first_row + p.rows > start_row)
        batch = self.preset.llm_batch_size
        while chunk := list(itertools.islice(pieces, batch)):
            rows = self._rows_of(chunk)
            yield rows[max(start_row - chunk[0].first_row, 0):]

    def fetch(self, ids: torch.Tensor) -> torch.Tensor:
        """The rows with these ids (any order), computed again from their contexts."""
        if not len(ids):
            return torch.empty(0)
        wanted = torch.unique(ids)
        last = int(wanted[-1])
        found_ids, found_rows, chunk = [], [], []

        def run():
            found_rows.append(self._rows_of(chunk))
            found_ids.append(torch.cat([torch.arange(p.first_row, p.first_row + p.rows) for p in chunk]))
            chunk.clear()

        for piece in self.pieces():
            if piece.first_row > last:
                break
            low = torch.searchsorted(wanted, piece.first_row)
            if low < len(wanted) and wanted[low] < piece.first_row + piece.rows:
                chunk.append(piece)
                if len(chunk) == self.preset.llm_batch_size:
                    run()
        if chunk:
            run()
        all_ids, all_rows = torch.cat(found_ids), torch.cat(found_rows)
        position = torch.searchsorted(all_ids, ids)
        if (position >= len(all_ids)).any() or not torch.equal(all_ids[position.clamp_max(len(all_ids) - 1)], ids):
            raise DataError(f"share {self.share}: the text no longer holds the rows the checkpoint "
                            "names (the text changed?); set EXPERIMENT_OVERWRITE=1 to start over")
        return all_rows[position.to(all_rows.device)]


class TensorShare:
    """A share whose rows are given (tests, and a stream already in memory)."""

    def __init__(self, rows: torch.Tensor, share: int = 0, chunk_rows: int = 50):
        self.all_rows, self.share, self.chunk_rows = rows, share, chunk_rows

    def read(self, start_row: int) -> Iterator[torch.Tensor]:
        yield from self.all_rows[start_row:].split(self.chunk_rows)

    def fetch(self, ids: torch.Tensor) -> torch.Tensor:
        return self.all_rows[ids]


# --------------------------------------------------------------------------------------------
# Shuffling buffers and batches
# --------------------------------------------------------------------------------------------
class ShareBuffer:
    """One share's shuffling buffer: random unread rows per batch, refilled from the share's
    stream whenever half of it has been read."""

    def __init__(self, source, size: int, seed: int, device: str):
        self.source, self.size, self.device = source, size, device
        self.generator = torch.Generator().manual_seed(seed + SHARE_SEED_STRIDE * source.share)
        self.rows = torch.empty(0)
        self.ids = torch.empty(0, dtype=torch.long)
        self.rows_read = 0
        self._stream = source.read(0)

    def top_up(self) -> None:
        if len(self.rows) >= self.size // 2:
            return
        parts, have = [self.rows], len(self.rows)
        for chunk in self._stream:
            parts.append(chunk.float().to(self.device))
            have += len(chunk)
            if have >= self.size:
                break
        new = have - len(self.rows)
        if new:
            self.ids = torch.cat([self.ids, torch.arange(self.rows_read, self.rows_read + new)])
            self.rows = torch.cat(parts)
            self.rows_read += new

    def take(self, n: int) -> torch.Tensor:
        perm = torch.randperm(len(self.rows), generator=self.generator)
        on_device = perm.to(self.rows.device)
        batch = self.rows[on_device[:n]]
        self.rows, self.ids = self.rows[on_device[n:]], self.ids[perm[n:]]
        return batch

    def state_dict(self) -> dict:
        return {"share": self.source.share, "ids": self.ids.clone(), "rows_read": self.rows_read,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """The buffer as it was when `state` was taken; its rows computed again (module docstring)."""
        self.ids = state["ids"].clone()
        self.rows = self.source.fetch(self.ids).float().to(self.device).reshape(len(self.ids), -1)
        self.rows_read = state["rows_read"]
        self.generator.set_state(state["generator"])
        self._stream = self.source.read(self.rows_read)


class StreamingBatches:
    """Global batches from the shares this process computes (module docstring)."""

    def __init__(self, sources: list, shares: int, buffer_rows: int, batch_size: int, seed: int,
                 device: str):
        if batch_size % shares:
            raise ConfigurationError(f"batch_size={batch_size} is not divisible by the {shares} "
                                     "shares of the streamed text (the processes of the run)")
        self.shares, self.batch_size, self.part = shares, batch_size, batch_size // shares
        self.buffers = [ShareBuffer(source, max(buffer_rows, 2 * self.part), seed, device)
                        for source in sources]

    @property
    def owned(self) -> list[int]:
        return [buffer.source.share for buffer in self.buffers]

    def shard(self, rank: int, world_size: int) -> StreamingBatches:
        """Under torchrun each rank computes its own share already: itself."""
        if self.owned != [rank] or self.shares != world_size:
            raise ConfigurationError(f"rank {rank} of {world_size} holds shares {self.owned} of "
                                     f"{self.shares}; a streamed torchrun run needs share r on rank r")
        return self

    def _next_batch(self, step: int) -> torch.Tensor:
        for buffer in self.buffers:
            buffer.top_up()
        short = [b.source.share for b in self.buffers if len(b.rows) < self.part]
        if distributed.any_rank(bool(short)):
            if self.shares == 1:
                raise DataError(f"the text stream ran out at step {step}; lower EXPERIMENT_TOKENS")
            where = (f"share {short[0]} of {self.shares}'s text ran out" if short else
                     "another rank's share of the text ran out")
            raise DataError(f"{where} at step {step}: the documents do not split evenly enough "
                            "into the shares for this EXPERIMENT_TOKENS; lower it or add text")
        return torch.cat([buffer.take(self.part) for buffer in self.buffers])

    def iterate(self, start_step: int, n_steps: int, resume: list[dict] | None = None
                ) -> Iterator[torch.Tensor]:
        """Batches start_step..n_steps-1. With `resume` (the shares' states at start_step, from
        a checkpoint) the buffers are rebuilt; without it earlier batches are replayed and dropped."""
        first = 0
        if resume is not None and start_step > 0:
            by_share = {state["share"]: state for state in resume}
            if sorted(by_share) != list(range(self.shares)):
                raise ConfigurationError(f"the checkpoint holds {len(by_share)} shares of the text and "
                                         f"this run streams {self.shares} (one per process, or "
                                         "EXPERIMENT_STREAM_SHARES); resume it as it was started, or "
                                         "set EXPERIMENT_OVERWRITE=1")
            for buffer in self.buffers:
                buffer.load_state_dict(by_share[buffer.source.share])
            first = start_step
        for step in range(first, n_steps):
            batch = self._next_batch(step)
            if step >= start_step:
                yield batch

    def state_dict(self) -> list[dict]:
        """This process's shares' states (between two steps)."""
        return [buffer.state_dict() for buffer in self.buffers]

    def first_batch(self) -> torch.Tensor:
        """B rows, each share's first B/S of its first fill (not consumed): the same on every rank."""
        for buffer in self.buffers:
            buffer.top_up()
        local = torch.cat([buffer.rows[:self.part] for buffer in self.buffers]).clone()
        if len(local) < len(self.buffers) * self.part:
            raise DataError(f"the text stream holds {len(local)} rows, fewer than one batch of "
                            f"{self.batch_size}; lower the batch size or add text")
        return distributed.gather_rows(local)

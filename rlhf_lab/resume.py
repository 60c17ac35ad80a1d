"""Exact resume: a stage killed at any moment continues from its ``last.ckpt`` as if never stopped.

Lightning's checkpoint holds the weights, the optimiser and the loops' counters. Three more things
decide what a stage does next, and this module saves and restores them:

- **Data position.** :class:`ResumableLoader` is a ``DataLoader`` that knows which epoch it is in and
  how many of that epoch's batches were trained; the module saves that position in the checkpoint and
  hands it back to the loader its ``train_dataloader`` returns (:meth:`ResumableModule.resumable`), so a
  resumed epoch continues with the next batch of the same order rather than starting the epoch again,
  and a stage resumed after a finished epoch starts the next epoch's order. (Lightning's own loader
  state, which it restores only mid-epoch, is the same dict.) Its shuffled order is exactly that of
  ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))``, so adopting it changed no figure.
- **Random streams and algorithm state.** :class:`ResumableModule` puts torch's global RNG states and
  whatever the module declares in :meth:`ResumableModule.extra_state` (an on-policy algorithm's
  sampling generator, a KL controller, a running baseline) into the checkpoint, every rank's when
  there are several, and restores each rank's own.
- **Where the checkpoint is.** A restarted command gets a new Hydra run directory, so the cache keeps
  an index ``<cache>/.inprogress/<stage>-<key>`` naming the ``last.ckpt`` of the build of that key
  in progress; the next build of the same key (same command, same config) resumes from it. The key
  lock (``cache.py``) guarantees no two live builds of one key.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader, Sampler

log = logging.getLogger(__name__)


def shuffled_order(size: int, seed: int, epoch: int) -> list[int]:
    """The order in which ``DataLoader(shuffle=True, generator=Generator().manual_seed(seed))`` visits
    ``size`` items in ``epoch`` (0-based): per epoch it draws the workers' base seed, the permutation,
    and a second, unused permutation (``RandomSampler`` asks for ``num_samples % n`` more items)."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(epoch + 1):
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        order = torch.randperm(size, generator=generator).tolist()
        torch.randperm(size, generator=generator)
    return order


LENGTH_WINDOW = 16
"""Global batches per window of the shuffled order that :func:`length_grouped_order` sorts by length:
wide enough that a batch's items are of similar length, narrow enough that the batches of an epoch
still mix the whole data set."""


def length_grouped_order(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[int]:
    """:func:`shuffled_order` re-arranged so that each global batch holds items of similar length.

    Windows of ``LENGTH_WINDOW`` batches of the shuffled order are sorted by length and cut into
    batches, and the full batches are shuffled (seeded by ``seed`` and ``epoch``); a last, partial
    batch stays last. Every item is still visited once an epoch: what changes is which items share a
    batch, and so how much padding a batch carries.
    """
    order = shuffled_order(len(lengths), seed, epoch)
    span = batch_size * LENGTH_WINDOW
    batches = []
    for start in range(0, len(order), span):
        window = sorted(order[start : start + span], key=lengths.__getitem__)
        batches += [window[i : i + batch_size] for i in range(0, len(window), batch_size)]
    last = [batches.pop()] if batches and len(batches[-1]) < batch_size else []
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    mixed = [batches[k] for k in torch.randperm(len(batches), generator=generator).tolist()] + last
    return [item for batch in mixed for item in batch]


class _PositionBatches(Sampler[list[int]]):
    def __init__(self, loader: "ResumableLoader") -> None:
        self.loader = loader

    def __len__(self) -> int:
        return math.ceil(self.loader.epoch_size / self.loader.global_batch)

    def __iter__(self):
        order, size = self.loader._start_epoch(), self.loader.global_batch
        for start in range(0, len(order), size):
            yield rank_share(order[start : start + size], self.loader.rank, self.loader.world)


def rank_share(batch: list[int], rank: int, world: int) -> list[int]:
    """Rank ``rank``'s part of a global batch: contiguous parts whose sizes differ by at most one; a
    last batch smaller than ``world`` gives the ranks past its end one of its items again (every rank
    must train every step)."""
    if world == 1:
        return batch
    if len(batch) < world:
        return [batch[rank % len(batch)]]
    base, extra = divmod(len(batch), world)
    start = rank * base + min(rank, extra)
    return batch[start : start + base + (rank < extra)]


class ResumableLoader(DataLoader):
    """Global batches of ``dataset`` in ``order_of(epoch)`` (index lists), resumable mid-epoch, and
    sharded over ranks: with :meth:`shard`, each rank loads its part of every global batch
    (:func:`rank_share`), so a batch size means the same on any number of processes.

    ``completed`` counts the batches of the current epoch that have been trained; the trainer recipe
    advances it after each training batch, before a checkpoint is saved (Lightning fetches a batch
    ahead, so counting the batches handed out would be one too many).
    """

    def __init__(self, dataset, batch_size: int, collate_fn: Callable, order_of: Callable[[int], list[int]], epoch_size: int) -> None:
        self.order_of, self.epoch_size, self.global_batch = order_of, epoch_size, batch_size
        self.epoch, self.completed, self._next_epoch = 0, 0, 0
        self.rank, self.world = 0, 1
        self._resume: Optional[dict] = None
        # Its own generator: iterating never draws from torch's global RNG, whose state a checkpoint restores.
        super().__init__(dataset, batch_sampler=_PositionBatches(self), collate_fn=collate_fn,
                         generator=torch.Generator().manual_seed(0))

    def shard(self, rank: int, world: int) -> None:
        """Load rank ``rank``'s part of every batch, of ``world`` ranks."""
        self.rank, self.world = rank, world

    def _start_epoch(self) -> list[int]:
        if self._resume is not None:
            epoch, skip = self._resume["epoch"], self._resume["completed"]
            self._resume = None
            if skip * self.global_batch >= self.epoch_size:
                epoch, skip = epoch + 1, 0  # saved at the end of its epoch: the next one starts
        else:
            epoch, skip = self._next_epoch, 0
        self.epoch, self.completed, self._next_epoch = epoch, skip, epoch + 1
        return self.order_of(epoch)[skip * self.global_batch :]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "completed": self.completed}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)


def shuffled_loader(dataset, batch_size: int, collate_fn: Callable, shuffle: bool, seed: int,
                    lengths: Optional[list[int]] = None) -> ResumableLoader:
    """A resumable ``DataLoader(dataset, batch_size, shuffle, generator=manual_seed(seed))``; shuffled
    with ``lengths`` (one per item), batches of similar lengths (:func:`length_grouped_order`)."""
    size = len(dataset)
    if shuffle and lengths is not None:
        order_of = lambda epoch: length_grouped_order(lengths, batch_size, seed, epoch)  # noqa: E731
    elif shuffle:
        order_of = lambda epoch: shuffled_order(size, seed, epoch)  # noqa: E731
    else:
        order_of = lambda epoch: list(range(size))  # noqa: E731
    return ResumableLoader(dataset, batch_size, collate_fn, order_of, size)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumableModule:
    """Mixin for a stage's ``LightningModule``: RNG streams, :meth:`extra_state` and the last figures
    go into every checkpoint and come back on resume."""

    CHECKPOINT_KEY = "rlhf_lab"
    resumed_figures: dict = {}

    def extra_state(self) -> dict:
        """State beyond weights and optimiser that decides what the module does next."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore :meth:`extra_state`'s dict (called from ``on_train_start``, after the module set itself up)."""

    def resumable(self, loader):
        """``loader``, positioned where the checkpoint this module was restored from left its data
        (call it on what ``train_dataloader`` returns)."""
        if not isinstance(loader, ResumableLoader):
            return loader
        trainer = self._trainer
        if trainer is not None:
            loader.shard(trainer.global_rank, trainer.world_size)
        pending = getattr(self, "_pending_loader_state", None)
        if pending is not None:
            loader.load_state_dict(pending)
            self._pending_loader_state = None
        return loader

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainer = self._trainer
        figures = {k: float(v) for k, v in trainer.callback_metrics.items()} if trainer is not None else {}
        loader = trainer.train_dataloader if trainer is not None else None
        mine = {"rng": _rng_state(), "extra": self.extra_state()}
        ranks = [mine]
        if trainer is not None and trainer.world_size > 1:
            # Every rank saves (Lightning writes rank 0's dict): each one's random streams go in.
            ranks = [None] * trainer.world_size
            torch.distributed.all_gather_object(ranks, mine)
        checkpoint[self.CHECKPOINT_KEY] = {
            "ranks": ranks, "figures": figures,
            "loader": loader.state_dict() if isinstance(loader, ResumableLoader) else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get(self.CHECKPOINT_KEY)
        if saved is None:
            return
        ranks = saved["ranks"]
        trainer = self._trainer
        mine = ranks[min(trainer.global_rank if trainer is not None else 0, len(ranks) - 1)]
        _set_rng_state(mine["rng"])
        self.resumed_figures = saved["figures"]
        self._pending_extra_state = mine["extra"]
        self._pending_loader_state = saved["loader"]

    def restore_extra_state(self) -> None:
        """Apply the restored :meth:`extra_state` once; call from ``on_train_start`` (after the checkpoint
        is restored, which some strategies do after ``on_fit_start``)."""
        pending = getattr(self, "_pending_extra_state", None)
        if pending is not None:
            self.load_extra_state(pending)
            self._pending_extra_state = None


class InProgressIndex:
    """``<cache>/.inprogress/<stage>-<key>``: the checkpoint of the unfinished build of an artifact."""

    def __init__(self, cache_root: Path) -> None:
        self.root = Path(cache_root) / ".inprogress"

    def _path(self, stage: str, key: str) -> Path:
        return self.root / f"{stage}-{key}"

    def checkpoint(self, stage: str, key: str) -> Optional[Path]:
        """The ``last.ckpt`` to resume the build of ``key`` from, if one was saved."""
        try:
            recorded = Path(json.loads(self._path(stage, key).read_text())["checkpoint"])
        except (OSError, ValueError, KeyError):
            return None
        return recorded if recorded.exists() else None  # a file, or a directory (DeepSpeed)

    def record(self, stage: str, key: str, checkpoint: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self._path(stage, key).with_suffix(".tmp")
        tmp.write_text(json.dumps({"checkpoint": str(Path(checkpoint).resolve())}) + "\n")
        tmp.replace(self._path(stage, key))

    def clear(self, stage: str, key: str) -> None:
        self._path(stage, key).unlink(missing_ok=True)

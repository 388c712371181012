"""The training loader: a torch DataLoader over this rank's streams, one stream per worker,
with exact resume.

A DataLoader delivers an iterable dataset's batches round-robin over its workers (worker 0,
1, ..., W-1, 0, ...). Each batch carries its stream's state after it, so the loader's state is
the last delivered state of each of its W streams plus the number of batches delivered. On
resume, worker w serves stream (w + delivered) % W, so the round-robin continues with the stream
whose turn it was, and each stream fast-forwards to its recorded position: the resumed run
delivers exactly the batches the uninterrupted one would have.

Changing the world size, the number of workers, the shards, the seed or the shuffle buffer
changes what the streams are; the loader then starts a new generation (fresh epoch 0, new
permutations and shuffles, seeded with the generation number): within each epoch of it no
record is read twice across all ranks and workers, and the rest of the interrupted epoch is not
replayed. The skipped-record counters restart at zero in a new generation.
"""
from __future__ import annotations

import logging
from collections import Counter

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clipav2.stage import resolve
from clipav2.data.shards import expand_urls
from clipav2.data.stream import StreamSpec, derive_seed, new_state, sample_batches
from clipav2.data.transforms import TrainTransform
from clipav2.train.faults import quiet_worker, start_workers

log = logging.getLogger(__name__)
STATE_VERSION = 1


class _RankStreams(IterableDataset):
    """Worker w of this rank runs local stream (w + offset) % W from its saved state."""

    def __init__(self, spec, first_stream, n_local, offset, states, batch_size, image_transform, text_transform):
        self.spec, self.first, self.n_local, self.offset = spec, first_stream, n_local, offset
        self.states, self.batch_size = states, batch_size
        self.image_transform, self.text_transform = image_transform, text_transform

    def __iter__(self):
        info = get_worker_info()
        worker = info.id if info is not None else 0
        local = (worker + self.offset) % self.n_local
        for batch in sample_batches(self.spec, self.first + local, self.states[local], self.batch_size,
                                    self.image_transform, self.text_transform):
            batch["_stream"] = local
            yield batch


class TrainLoader:
    """Iterate for micro-batches {"images": uint8 (B,3,S,S), "text": int64 (B,L), "keys": [str]}.
    Iterating again continues where the last iteration stopped."""

    def __init__(self, cfg, stage, world, text_transform, state=None):
        d = cfg.data
        self.rank, self.world_size = int(world.rank), int(world.world_size)
        self.workers = loader_workers(d, world.device)
        self.n_local = max(1, self.workers)
        self.batch_size = resolve(cfg, stage, world.world_size).micro_batch
        self.urls = tuple(expand_urls(d.train))
        self.layout = {"urls": derive_seed(*self.urls), "n_shards": len(self.urls), "seed": cfg.seed,
                       "stage": stage.name, "world_size": self.world_size, "workers": self.workers,
                       "shuffle_buffer": d.shuffle_buffer}
        self.generation = 0
        self.image_transform = TrainTransform.from_stage(stage, fast_decode=d.fast_decode)
        self.text_transform = text_transform
        self.prefetch, self.pin_memory = d.prefetch, d.pin_memory and torch.cuda.is_available()
        self.states = [new_state() for _ in range(self.n_local)]
        self.delivered = 0
        self._iterator = None
        if state is not None:
            self.load_state_dict(state)

    # ------------------------------------------------------------------ iteration
    def _dataloader(self) -> DataLoader:
        streams = self.world_size * self.n_local
        spec = StreamSpec(self.urls, self.layout["seed"], self.layout["stage"], streams,
                          stream_buffer(self.layout["shuffle_buffer"], streams), self.generation)
        dataset = _RankStreams(spec, self.rank * self.n_local, self.n_local, self.delivered % self.n_local,
                               [dict(s) for s in self.states], self.batch_size, self.image_transform, self.text_transform)
        extra = {"persistent_workers": True, "prefetch_factor": max(1, self.prefetch),
                 "worker_init_fn": quiet_worker} if self.workers else {}
        return DataLoader(dataset, batch_size=None, num_workers=self.workers, pin_memory=self.pin_memory, **extra)

    def __iter__(self):
        if self._iterator is None:
            self._iterator = start_workers(self._dataloader())
        for batch in self._iterator:
            self.states[batch.pop("_stream")] = batch.pop("_state")
            self.delivered += 1
            yield batch

    def close(self) -> None:
        """Stop the workers (the next iteration restarts them from the current state). Explicitly:
        a traceback or a suspended `for` may still hold the iterator, and the workers ignore SIGTERM."""
        if self._iterator is not None and hasattr(self._iterator, "_shutdown_workers"):
            self._iterator._shutdown_workers()  # what torch's own __del__ calls
        self._iterator = None

    # ------------------------------------------------------------------ state
    @property
    def skipped(self) -> dict:
        """Records skipped so far by reason, summed over this rank's workers."""
        total = Counter()
        for s in self.states:
            total.update(s["skipped"])
        return dict(total)

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "layout": dict(self.layout), "rank": self.rank,
                "generation": self.generation, "delivered": self.delivered,
                "streams": [dict(s, skipped=dict(s["skipped"])) for s in self.states]}

    def load_state_dict(self, state: dict) -> None:
        """This rank's own saved state resumes exactly. After a change of layout (world size,
        workers, shards, seed, shuffle buffer), any rank's saved state starts a new generation."""
        _check_state(state)
        self.close()
        if state["layout"] == self.layout:
            if state["rank"] != self.rank:
                raise ValueError(f"data loader state of rank {state['rank']} given to rank {self.rank}: "
                                 "with an unchanged world size each rank resumes from its own state")
            if len(state["streams"]) != self.n_local:
                raise ValueError(f"data loader state of {len(state['streams'])} streams given to {self.n_local} workers")
            self.generation, self.delivered = state["generation"], state["delivered"]
            self.states = [dict(s, skipped=dict(s["skipped"])) for s in state["streams"]]
            return
        changed = sorted(k for k in self.layout if state["layout"].get(k) != self.layout[k])
        self.generation, self.delivered = state["generation"] + 1, 0
        self.states = [new_state() for _ in range(self.n_local)]
        if self.rank == 0:
            log.warning("data: %s changed since the checkpoint; starting data generation %d (fresh epochs, "
                        "no record read twice within an epoch)", ", ".join(changed), self.generation)


def _check_state(state) -> None:
    """A saved loader state of the shape `state_dict` writes (BadState, a ValueError, if not)."""
    from clipav2.train.state_check import count, mapping, need

    mapping(state, "data state")
    need(state.get("version") == STATE_VERSION, "data state version", state.get("version"), str(STATE_VERSION))
    mapping(state.get("layout"), "data state layout")
    for field in ("rank", "generation", "delivered"):
        count(state.get(field), f"data state {field}")
    streams = state.get("streams")
    need(isinstance(streams, list), "data state streams", streams, "a list of stream states")
    for i, stream in enumerate(streams):
        mapping(stream, f"data state streams[{i}]")
        count(stream.get("epoch"), f"data state streams[{i}].epoch")
        count(stream.get("position"), f"data state streams[{i}].position")
        for reason, n in mapping(stream.get("skipped"), f"data state streams[{i}].skipped").items():
            count(n, f"data state streams[{i}].skipped.{reason}")


def loader_workers(data_cfg, device) -> int:
    """Loader processes per rank, for training and evaluation alike: `data.workers`, or by default
    this machine's CPUs shared by its GPUs (ranks), one left for the trainer itself, at most 16."""
    import os

    if data_cfg.workers is not None:
        return data_cfg.workers
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_node = torch.cuda.device_count() if torch.device(device).type == "cuda" else 1
    return max(1, min(16, cpus // max(1, per_node) - 1))


def stream_buffer(total: int, streams: int) -> int:
    """`data.shuffle_buffer` is the job's figure (the JAX recipe's 250,000), split over every
    rank's workers: each stream shuffles within total / streams records."""
    return max(1, total // max(1, streams))


def host_memory_note(loader, stage) -> str:
    """One line: the shuffle buffers and prefetched batches this rank holds, in bytes estimated
    from the first shard (its size over its records) and the micro-batch's uint8 tensors."""
    import tarfile
    from pathlib import Path

    streams = loader.world_size * loader.n_local
    per_stream = stream_buffer(loader.layout["shuffle_buffer"], streams)
    first = Path(loader.urls[0])
    record = None
    if first.is_file():
        try:
            with tarfile.open(first) as tar:
                keys = {m.name.split(".", 1)[0] for m in tar.getmembers() if m.isfile()}
            record = first.stat().st_size / max(1, len(keys))
        except (tarfile.TarError, OSError):  # a bad shard is the stream's to skip and count, not a crash here
            record = None
    batch = loader.batch_size * (3 * stage.image_size**2 + 8 * stage.text_len)
    in_flight = batch * max(1, loader.prefetch) * loader.n_local
    buffers = None if record is None else per_stream * loader.n_local * record
    total = f"~{(buffers + in_flight) / 2**30:.2f} GiB" if buffers is not None else "unknown (remote or unreadable first shard)"
    return (f"data: shuffle buffer {loader.layout['shuffle_buffer']:,} over {loader.world_size} ranks x "
            f"{loader.n_local} workers = {per_stream:,} records per stream; expected host memory per rank "
            f"{total} (buffers of encoded records + {in_flight / 2**20:.0f} MiB of prefetched batches)")


def build_train_loader(cfg, stage, world, text_transform, state=None) -> TrainLoader:
    return TrainLoader(cfg, stage, world, text_transform, state)


"""Several processes (one per GPU, or several CPU processes) training one model: torch.distributed
with DistributedDataParallel, started by ``torchrun`` or ``accelerate launch``.

What every training loop in synthmed does under it (docs/scale-out.md):

- the configured ``batch_size`` is the GLOBAL batch. Every rank draws the same global batch from
  the same seeded generator (indices, flips, noise, timesteps, augmentation), keeps its own
  contiguous rows of it (:func:`shard_rows`) and runs the network on those only. The loss of a rank
  is its rows' sum divided by the global batch (:func:`local_share`), and DDP averages gradients
  over ranks, so ``world_size x`` that is exactly the single-process gradient: N ranks reproduce one
  process with the same batch up to float rounding (tests/test_distributed.py checks it).
- the learning rate is therefore NOT rescaled: the global batch, and with it the optimisation
  problem, does not change with the number of processes; more processes only make a step faster.
- every rank applies the same optimiser step and the same EMA update, so weights, EMA and
  optimiser state stay identical on all ranks without being broadcast.
- only rank 0 writes checkpoints and run-folder files (atomically, :mod:`synthmed.files`); every
  rank reads the checkpoint on resume (the folder must be on a shared file system across nodes).
- decisions taken from a clock (time budgets, the step-time estimate) are rank 0's, broadcast, so
  all ranks run the same number of steps.
- sampling: the work is split into chunks of a fixed size whose noise depends only on the seed and
  the chunk, ranks take chunks round-robin, and the chunks are gathered in order: the same images
  as one process, whatever the number of ranks (:func:`chunk_owner`, :func:`gather_chunks`).

Without a launcher (``WORLD_SIZE`` unset or 1) everything here is a no-op: one process, no
process group, nothing wrapped.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

from synthmed import runtime

#: ``distributed`` config values: "auto" joins a process group when a launcher started several
#: processes (WORLD_SIZE > 1), "off" never does (each process trains alone), "on" requires one
MODES = ("auto", "off", "on")


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world_size > 1


_world = World()


def world() -> World:
    """The process group this process is in (a world of one when none was joined)."""
    return _world


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one rank that writes files and prints."""
    return _world.rank == 0


def launched_world_size() -> int:
    """WORLD_SIZE as set by torchrun / accelerate launch / SLURM wrappers (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE = {os.environ['WORLD_SIZE']!r} is not a number; start with torchrun") from None


def init(mode: str = "auto", device: str = "cpu") -> World:
    """Join the process group a launcher prepared (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).

    Backend: nccl when ``device`` is CUDA, gloo on CPU. Idempotent: a second call returns the
    world already joined."""
    global _world
    if mode not in MODES:
        raise ValueError(f"distributed = {mode!r}: choose one of {', '.join(MODES)}")
    if _world.active:
        return _world
    size = launched_world_size()
    if mode == "off" or (mode == "auto" and size <= 1):
        return _world
    if size <= 1:
        raise ValueError("distributed = 'on' but this process was not started by a launcher (WORLD_SIZE unset or "
                         "1); start it with `torchrun --nproc-per-node N -m synthmed ...` or set distributed: auto")
    import torch
    import torch.distributed as dist

    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    _world = World(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, backend=backend)
    return _world


def shutdown() -> None:
    """Leave the process group (after the last collective call); this process is alone again."""
    global _world
    if _world.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _world = World()


def device_for(device: str) -> str:
    """The device of this rank: ``cuda:LOCAL_RANK`` for a CUDA run with several processes."""
    if _world.active and device == "cuda":
        return f"cuda:{_world.local_rank}"
    return device


def barrier() -> None:
    if _world.active:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------- training


def shard_rows(n: int) -> slice:
    """This rank's contiguous rows of a global batch of ``n`` (ranks differ by at most one row)."""
    w = _world
    base, extra = divmod(n, w.world_size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (1 if w.rank < extra else 0))


def local_share(n_local: int, n_global: int) -> float:
    """Factor turning a mean over this rank's ``n_local`` rows into its part of the global mean
    (sum over the rows / ``n_global``); 1 in a single process."""
    return n_local / max(n_global, 1)


def gradient_scale() -> int:
    """DDP averages gradients over ranks: a rank's share of the loss times this is the global gradient."""
    return _world.world_size


def wrap(module, device: str, **kwargs):
    """``module`` inside DistributedDataParallel when several ranks train, else ``module`` itself.

    The wrapper shares the module's parameters, so the optimiser, the EMA and the checkpoints keep
    using the plain module; only the training forward goes through the wrapper (that is what makes
    DDP all-reduce the gradients in backward)."""
    if not _world.active:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [int(str(device).split(":")[1])] if str(device).startswith("cuda:") else None
    return DDP(module, device_ids=ids, **kwargs)


@contextlib.contextmanager
def swapped(owner, name: str, replacement):
    """``owner.name`` is ``replacement`` inside the block: lets a training forward written against the
    plain module (``self.unet(...)``) run through its DDP wrapper without changing that code."""
    if replacement is getattr(owner, name):
        yield
        return
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def sum_over_ranks(value: float) -> float:
    """``value`` summed over ranks (a rank's share of a loss -> the global mean); itself in one process."""
    if not _world.active:
        return float(value)
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return float(t.item())


def sum_dict_over_ranks(values: dict[str, float], keys) -> dict[str, float]:
    """The entries ``keys`` of ``values`` summed over ranks in one call, the others as they are."""
    if not _world.active:
        return values
    import torch
    import torch.distributed as dist

    keys = [k for k in keys if k in values]
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return {**values, **dict(zip(keys, t.tolist()))}


def main_decides(value):
    """Rank 0's ``value`` on every rank (a bool, a number or any picklable object): what a clock
    decides (stop now, how many steps fit) must be the same everywhere or the ranks deadlock."""
    if not _world.active:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0, device=None if _world.backend == "gloo" else _collective_device())
    return box[0]


def broadcast_buffers(module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) into every rank's ``module``: each rank's
    BatchNorm saw only its rows, and an evaluation that decides early stopping must agree."""
    if not _world.active:
        return
    import torch.distributed as dist

    for b in module.buffers():
        dist.broadcast(b.data, src=0)


def _collective_device():
    import torch

    return torch.device("cuda", _world.local_rank) if _world.backend == "nccl" else torch.device("cpu")


class SharedStepTimer(runtime.StepTimer):
    """A :class:`runtime.StepTimer` whose measurement is rank 0's on every rank: :meth:`tick` returns
    rank 0's answer and, once measured, every rank holds rank 0's seconds per step. One tiny
    broadcast per step until the measurement ends, none after."""

    def tick(self) -> bool:
        ended = super().tick()
        if not _world.active:
            return ended
        if self._shared_done:
            return False
        figure = main_decides((ended, self.seconds_per_step, self.measured_over) if is_main() else None)
        ended, sps, over = figure
        if ended:
            self.seconds_per_step, self.measured_over, self._shared_done = sps, over, True
        return ended

    _shared_done = False


# --------------------------------------------------------------------------- sampling and features


def chunk_owner(chunk_index: int) -> bool:
    """True when this rank computes chunk ``chunk_index`` (round-robin over ranks)."""
    return chunk_index % _world.world_size == _world.rank


def gather_chunks(mine: dict[int, object], n_chunks: int) -> list:
    """Every chunk in order, on every rank, from the chunks each rank computed ({index: value});
    tensors travel to the CPU."""
    if not _world.active:
        return [mine[i] for i in range(n_chunks)]
    import torch.distributed as dist

    parts: list = [None] * _world.world_size
    dist.all_gather_object(parts, {i: _to_cpu(v) for i, v in mine.items()})
    merged: dict = {}
    for p in parts:
        merged.update(p)
    missing = [i for i in range(n_chunks) if i not in merged]
    if missing:
        raise RuntimeError(f"chunks {missing[:5]} were computed by no rank")
    return [merged[i] for i in range(n_chunks)]


def _to_cpu(v):
    return v.cpu() if hasattr(v, "cpu") else v


def map_chunks(fn, n_items: int, chunk: int) -> list:
    """``fn(start, stop)`` for every chunk of ``range(n_items)``, the chunks shared out over ranks and
    returned in order on every rank: feature extraction and other per-image work, sharded."""
    starts = list(range(0, n_items, chunk))
    mine = {i: fn(s, min(s + chunk, n_items)) for i, s in enumerate(starts) if chunk_owner(i)}
    return gather_chunks(mine, len(starts))


__all__ = ["MODES", "World", "world", "is_main", "init", "shutdown", "device_for", "barrier", "shard_rows",
           "local_share", "gradient_scale", "wrap", "swapped", "sum_over_ranks", "sum_dict_over_ranks",
           "main_decides", "broadcast_buffers", "SharedStepTimer", "chunk_owner", "gather_chunks", "map_chunks"]

"""Device, thread and seed handling, and the step timing of training loops, shared by every step."""

from __future__ import annotations

import math
import os
import random
import time
import warnings

import numpy as np


def resolve_device(name: str = "auto") -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        # a user error (one line, exit 2): the *-gpu presets set device: cuda
        raise ValueError("device = 'cuda' but torch sees no CUDA GPU; use --device cpu (or --set device=cpu)")
    return name


def set_threads(n: int = 0) -> int:
    """Use all cores by default: torch's own default can be lower inside containers."""
    import torch

    n = n or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sampling_batch_size(device: str) -> int:
    """Images per network call when generating. On a CPU a small batch keeps the activations in cache:
    32 gave 2.1x the images/s of 256 at one thread and 2.0x at two (pixel28 U-Net,
    benchmarks/sample_batch.py). A GPU wants large batches."""
    return 32 if str(device) == "cpu" else 256


def bf16_supported(device: str) -> bool:
    """bf16 autocast only on CUDA GPUs that support it. Never on CPU: on CPUs without bf16 units
    it runs two orders of magnitude slower than float32 (measured: <1 GFLOP/s vs ~60)."""
    import torch

    return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def autocast_dtype(device: str, enabled: bool = True):
    """The autocast dtype of a training step: bfloat16 on CUDA GPUs that support it, else None
    (float32). Never float16: `renal-ldm` found fp16 AMP silently froze weights whose gradients
    underflowed, and bf16 has float32's exponent range, so it needs no loss scaling."""
    import torch

    return torch.bfloat16 if enabled and bf16_supported(device) else None


def fused_adam_supported(device: str) -> bool:
    """torch's fused (single-kernel) Adam/AdamW: on CUDA; the for-each path elsewhere."""
    return str(device).startswith("cuda")


# --------------------------------------------------------------------------- step timing
#
# Every training loop (generator, autoencoder, classifiers) times its first steps, and a run that
# will be long says so at once, with the estimate and how to shorten it, instead of spending hours
# without a word. The same measurement sets the number of steps under ``generator.budget_minutes``.

#: a training loop whose estimated time exceeds this (seconds) says so at once, in one warning line
LONG_TRAINING_SECONDS = 15 * 60
#: steps left out of the measurement: the first ones pay one-time costs (allocation, kernel choice)
TIMING_WARMUP_STEPS = 2
#: the measurement ends after this many timed steps, or once they took TIMING_MIN_SECONDS
TIMING_STEPS = 20
TIMING_MIN_SECONDS = 10.0

#: the clock the step timers read (seconds); tests replace it to fake a step time
clock = time.perf_counter

_warned_once: set = set()


def format_duration(seconds: float) -> str:
    """``45 s``, ``14 min``, ``2 h 10 min``, ``3 d 4 h``: what a person reads in a warning line."""
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{s:.0f} s"
    m = round(s / 60)
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


class StepTimer:
    """Seconds per step of a training loop, measured over its first steps.

    Call :meth:`tick` once after every step; it returns True at the step where the measurement
    ends, and :attr:`seconds_per_step` holds the figure from then on. The first ``warmup`` steps are
    left out (one-time costs), unless a single step took ``min_seconds`` or more: then those costs
    are small beside it, and waiting for more steps would only delay the estimate (a 3-minute step
    is estimated after one step, not after an hour). ``exact`` always leaves them out: for a time
    budget, where one slow first step would cut the run short. The measurement ends after ``timed_steps``
    timed steps or once they took ``min_seconds``, whichever comes first. Only :data:`clock` is
    read, once at the start and once per tick. On a GPU the loops call ``loss.item()`` every
    step, which waits for the device, so the clock sees the real step time.
    """

    def __init__(self, *, warmup: int = TIMING_WARMUP_STEPS, timed_steps: int = TIMING_STEPS,
                 min_seconds: float = TIMING_MIN_SECONDS, exact: bool = False):
        self.warmup, self.timed_steps, self.min_seconds = warmup, max(1, timed_steps), min_seconds
        self.exact = exact
        #: ``last``: the clock at the last tick (the start before the first)
        self.start = self.last = clock()
        self.ticks = 0
        self._timed_n, self._timed_s = 0, 0.0
        self.seconds_per_step: float | None = None
        #: steps the figure was measured over
        self.measured_over = 0

    @property
    def elapsed(self) -> float:
        """Seconds from the timer's start to the last tick."""
        return self.last - self.start

    def tick(self) -> bool:
        now = clock()
        dt, self.last = now - self.last, now
        self.ticks += 1
        if self.seconds_per_step is not None:
            return False
        if self.ticks <= self.warmup and (self.exact or dt < self.min_seconds):
            return False
        self._timed_n += 1
        self._timed_s += dt
        if self._timed_n >= self.timed_steps or self._timed_s >= self.min_seconds:
            self.seconds_per_step = self._timed_s / self._timed_n
            self.measured_over = self._timed_n
            return True
        return False

    def estimate(self, steps: int) -> dict:
        """What :func:`warn_if_long` and the histories record: the figure and ``steps`` x it."""
        return {"seconds_per_step": self.seconds_per_step, "measured_over_steps": self.measured_over,
                "steps": int(steps), "estimated_seconds": (self.seconds_per_step or 0.0) * steps}


def warn_if_long(what: str, seconds_per_step: float, steps: int, device: str, shorten: list[str], *,
                 threshold: float = LONG_TRAINING_SECONDS, once_key=None) -> str | None:
    """One warning line when ``seconds_per_step x steps`` exceeds ``threshold``, e.g. "generator
    training will take about 2 h 10 min on cpu (3.1 s/step x 2500 steps); to shorten: ...".

    ``shorten``: the settings that would (``--device cuda`` is added on a CPU). ``once_key``: warn
    at most once per process for this key (loops that run many times, such as the downstream
    classifiers). Returns the message, or None when the run is short enough."""
    total = seconds_per_step * steps
    if total <= threshold:
        return None
    if once_key is not None:
        if once_key in _warned_once:
            return None
        _warned_once.add(once_key)
    hints = list(shorten) + (["--device cuda"] if str(device).startswith("cpu") else [])
    how = hints[0] if len(hints) == 1 else ", ".join(hints[:-1]) + ", or " + hints[-1]
    msg = (f"{what} will take about {format_duration(total)} on {device} ({seconds_per_step:.3g} s/step x "
           f"{steps} steps); to shorten: {how}")
    warnings.warn(msg, stacklevel=2)
    return msg


def steps_within(seconds: float, seconds_per_step: float) -> int:
    """Whole steps of ``seconds_per_step`` that fit in ``seconds`` (0 when none)."""
    if seconds_per_step <= 0:
        raise ValueError(f"seconds_per_step must be > 0, got {seconds_per_step}")
    return max(0, math.floor(seconds / seconds_per_step))

"""The benchmark scripts run end to end at a tiny size and write the figures they promise.

A benchmark that no test runs breaks silently when the code it times changes (train_throughput.py
called the denoiser with the diffusers keyword it no longer takes, and nobody noticed for days)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, timeout: int = 300) -> None:
    proc = subprocess.run([sys.executable, str(BENCH / name), *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_train_throughput_writes_both_loops_and_their_ratio(tmp_path):
    out = tmp_path / "tt.json"
    run_script("train_throughput.py", "--device", "cpu", "--threads", "1", "--steps", "2", "--sample-n", "8",
               "--batch-size", "8", "--image-size", "16", "--out", str(out))
    res = json.loads(out.read_text())
    for key in ("train_images_per_second", "sample_images_per_second"):
        r = res[key]
        assert r["synthmed"] > 0 and r["reference"] > 0
        assert abs(r["ratio"] - r["synthmed"] / r["reference"]) < 1e-9
    assert res["train_step_gflop_per_image"] > 0 and res["fraction_of_matmul_peak"] > 0
    assert res["batch_size"] == 8 and res["image_size"] == 16

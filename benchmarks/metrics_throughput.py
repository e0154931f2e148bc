"""Feature-metric throughput and memory: synthmed vs torch-fidelity, same extractor, same images.

Part 1 (images): BloodMNIST test images ("real") vs as many BloodMNIST val images flagged
synthetic (train images once N exceeds the val split), through one Inception-v3 weights file
used by both libraries. synthmed: ``evaluate()`` (features once per set, then FID, KID,
precision/recall/F1, density/coverage); torch-fidelity: ``calculate_metrics(fid, kid, prc)``
with ``feature_extractor_weights_path`` set to the same file and its cache off. Reports wall
time, images/s, their ratio, peak memory, and how far the two libraries' values differ.

The weights are random (synthmed's ``InceptionExtractor(random_weights=True)``; no download):
the numbers are timings and an agreement check, never FIDs to quote. Untrained BatchNorm
statistics shrink the random network's features to ~1e-8, where float32 rounding would swamp
the comparison, so the BatchNorm statistics are first recalibrated on a few training images
(one forward pass in train mode); the file both libraries load is saved after that.

Part 2 (memory as N grows): synthetic 2048-d feature vectors generated batch by batch (no
network: the point is the metric code's memory). FID statistics streamed through
``FeatureStats`` vs the textbook "concatenate, then np.cov" (what torch-fidelity and
pytorch-fid do), and synthmed's chunked k-NN precision/recall/density/coverage vs
torch-fidelity's full-matrix precision/recall. Every measurement runs in a fresh process so
its peak RSS is its own; numpy allocations are also counted exactly with tracemalloc.

    python benchmarks/metrics_throughput.py                         # defaults: 8.5 min on 2 busy CPU cores
    python benchmarks/metrics_throughput.py --n 300 --memory-n 2000,10000      # smoke test
    python benchmarks/metrics_throughput.py --n 1000 --knn-budget-s 600         # larger CPU run (~25 min)
    python benchmarks/metrics_throughput.py --device cuda --n 3421 --knn-dim 2048 --knn-budget-s 900

Writes benchmarks/results/metrics_throughput_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
import traceback
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
MIB = 2**20
#: images used to recalibrate the random network's BatchNorm statistics (see the module docstring)
CALIBRATION_IMAGES = 8
#: rank of the shared low-rank structure of the synthetic features (gives them a non-trivial covariance)
FEATURE_RANK = 32


# ----------------------------------------------------------------------------- process isolation
def _proc_status_mib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_rss_mib() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: a spawned child's ru_maxrss starts at its
    parent's peak (it survives exec), which would hide every allocation smaller than that."""
    hwm = _proc_status_mib("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def reset_peak_rss() -> float | None:
    """Reset VmHWM to the current RSS (Linux clear_refs); returns that RSS, or None if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status_mib("VmRSS")


def _child_entry(queue, fn, args):
    # thread counts reach the worker through OMP_NUM_THREADS & co. (set by main), which torch and
    # numpy read at import; importing torch here would cost seconds in the numpy-only workers
    try:
        queue.put(("ok", fn(*args)))
    except BaseException:  # noqa: BLE001 - any failure is reported to the parent with its traceback
        queue.put(("error", traceback.format_exc()))


def run_isolated(fn, *args) -> dict:
    """Run ``fn(*args)`` in a fresh spawned process: its peak RSS then belongs to this one
    measurement instead of every earlier one (ru_maxrss never goes down within a process)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child_entry, args=(queue, fn, args))
    proc.start()
    status, payload = queue.get()  # read before join: a large result would otherwise block the child
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{fn.__name__} failed in its worker process:\n{payload}")
    return payload


class Meter:
    """Wall time, peak-RSS increase and tracemalloc peak of one block of work."""

    def __init__(self, device: str = "cpu", trace: bool = True):
        self.device, self.trace = device, trace

    def __enter__(self):
        # warm BLAS first: its thread buffers are a one-off cost, not the metric's
        a = np.ones((64, 64))
        a @ a
        current = reset_peak_rss()
        self.rss0 = peak_rss_mib() if current is None else current
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if self.trace:
            tracemalloc.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            self.cuda_peak_mib = torch.cuda.max_memory_allocated() / MIB
        self.seconds = time.perf_counter() - self.t0
        self.traced_peak_mib = tracemalloc.get_traced_memory()[1] / MIB if self.trace else None
        if self.trace:
            tracemalloc.stop()
        self.rss_increase_mib = peak_rss_mib() - self.rss0
        return False

    def figures(self) -> dict:
        out = {"seconds": self.seconds, "peak_rss_increase_mib": self.rss_increase_mib}
        if self.traced_peak_mib is not None:
            out["numpy_peak_mib"] = self.traced_peak_mib
        if hasattr(self, "cuda_peak_mib"):
            out["cuda_peak_mib"] = self.cuda_peak_mib
        return out


# ----------------------------------------------------------------------------- part 1: images
def load_image_sets(data_root: Path, n: int, seed: int):
    """``n`` random BloodMNIST test images as real, ``n`` val (or train) images flagged synthetic,
    and ``CALIBRATION_IMAGES`` train images for the BatchNorm recalibration."""
    from synthmed.data.sources import load_medmnist

    splits = load_medmnist("bloodmnist", data_root)
    test, val, train = splits.test, splits.val, splits.train
    if n > len(test):
        raise SystemExit(f"--n {n} exceeds the BloodMNIST test split ({len(test)} images)")
    stand_in = val if n <= len(val) else train
    rng = np.random.default_rng(seed)
    real = test.subset(np.sort(rng.choice(len(test), n, replace=False)), name="bloodmnist-test")
    fake = stand_in.subset(np.sort(rng.choice(len(stand_in), n, replace=False)), name=f"bloodmnist-{stand_in.name}")
    fake = replace(fake, synthetic=True)  # a stand-in for generator output; evaluate() requires the flag
    calib = train.subset(np.arange(CALIBRATION_IMAGES), name="calibration")
    return real, fake, calib


def write_calibrated_random_inception(path: Path, calibration_images: np.ndarray, seed: int) -> dict:
    """synthmed's random-weight Inception with BatchNorm statistics taken from one batch, saved to ``path``."""
    import torch

    from synthmed.features.inception import InceptionExtractor
    from synthmed.features.registry import state_dict_sha256, uint8_nchw_rgb

    net = InceptionExtractor(random_weights=True, seed=seed).net
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch the running statistics ARE that batch's
    net.train()
    with torch.no_grad():
        net(uint8_nchw_rgb(calibration_images))
    net.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    torch.save(net.state_dict(), path)
    return {"weights_state_dict_sha256": state_dict_sha256(net.state_dict()), "seed": seed,
            "batchnorm_calibration_images": len(calibration_images)}


def synthmed_image_run(real, fake, weights_path: str, device: str, batch_size: int) -> dict:
    """Timed: build the extractor from the weights file, then ``evaluate()`` every feature metric."""
    from synthmed.features.inception import InceptionExtractor
    from synthmed.features.registry import state_dict_sha256
    from synthmed.metrics.evaluate import FEATURE_METRICS, evaluate

    with Meter(device, trace=False) as meter:
        with warnings.catch_warnings():
            # expected: the file is not torch-fidelity's published download
            warnings.filterwarnings("ignore", message=".*sha256 does not start with.*")
            extractor = InceptionExtractor(weights_path, device=device)
        result = evaluate(real, fake, extractor, metrics=FEATURE_METRICS, per_class=False, n_boot=0,
                          batch_size=batch_size)
    values = {m: e["value"] for m, e in result["rows"][0]["metrics"].items()}
    return {**meter.figures(), "images_per_second": (len(real) + len(fake)) / meter.seconds,
            "weights_state_dict_sha256": state_dict_sha256(extractor.net.state_dict()),
            "values": {"fid": values["fid"], "kid": values["kid"], "precision": values["precision"],
                       "recall": values["recall"], "f1": values["f1"], "density": values["density"],
                       "coverage": values["coverage"]}}


def torch_fidelity_image_run(real, fake, weights_path: str, device: str, batch_size: int) -> dict:
    """Timed: ``torch_fidelity.calculate_metrics`` with the same weights file, cache off."""
    import torch
    import torch_fidelity

    from synthmed.features.registry import state_dict_sha256

    # This worker was spawned, which made "spawn" its default start method; torch-fidelity's
    # DataLoader workers would then each re-import torch. Fork is what a user's script on Linux gets.
    mp.set_start_method("fork", force=True)
    # torch-fidelity asks for 4 loader workers whatever the core count (recorded in the result)
    warnings.filterwarnings("ignore", message="This DataLoader will create")

    class UInt8CHW(torch.utils.data.Dataset):
        # torch-fidelity's contract for Dataset inputs: item i is a uint8 tensor (3, H, W)
        def __init__(self, images: np.ndarray):
            self.images = images

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            x = torch.from_numpy(self.images[i]).permute(2, 0, 1)
            return (x.expand(3, -1, -1) if x.shape[0] == 1 else x).contiguous()

    with Meter(device, trace=False) as meter:
        # torch-fidelity's convention: input1 is the generated set, input2 the real one
        out = torch_fidelity.calculate_metrics(
            input1=UInt8CHW(fake.images), input2=UInt8CHW(real.images), cuda=device.startswith("cuda"),
            batch_size=batch_size, fid=True, kid=True, prc=True, feature_extractor="inception-v3-compat",
            feature_extractor_weights_path=weights_path, kid_subset_size=min(1000, len(real), len(fake)),
            cache=False, verbose=False)
    weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    return {**meter.figures(), "images_per_second": (len(real) + len(fake)) / meter.seconds,
            "weights_state_dict_sha256": state_dict_sha256(weights),
            "dataloader_workers": min(4, 2 * mp.cpu_count()),  # what torch-fidelity picks (save_cpu_ram=False)
            "values": {"fid": out["frechet_inception_distance"], "kid": out["kernel_inception_distance_mean"],
                       "precision": out["precision"], "recall": out["recall"], "f1": out["f_score"]}}


def metric_features(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 stand-ins for network features (what torch-fidelity holds), real and synthetic."""
    real = np.concatenate(list(feature_batches(n, dim, 4096, 1, False))).astype(np.float32)
    fake = np.concatenate(list(feature_batches(n, dim, 4096, 2, True))).astype(np.float32)
    return real, fake


def synthmed_metrics_only_run(n: int, dim: int, k: int) -> dict:
    from synthmed.metrics.fid import fid
    from synthmed.metrics.kid import kid
    from synthmed.metrics.prdc import prdc

    real, fake = (x.astype(np.float64) for x in metric_features(n, dim))
    with Meter() as meter:
        values = {"fid": fid(real, fake)["fid"], "kid": kid(real, fake, subset_size=min(1000, n))["mean"],
                  **prdc(real, fake, k=k)}
    return {**meter.figures(), "values": values}


def torch_fidelity_metrics_only_run(n: int, dim: int, k: int) -> dict:
    import torch
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = (torch.from_numpy(x) for x in metric_features(n, dim))
    with Meter() as meter:
        # the functions calculate_metrics calls once features exist; input1 is the generated set
        values = fid_statistics_to_metric(fid_features_to_statistics(fake), fid_features_to_statistics(real), False)
        values.update(kid_features_to_metric(fake, real, kid_subset_size=min(1000, n), verbose=False))
        values.update(prc_features_to_metric(fake, real, prc_neighborhood=k, verbose=False))
    return {**meter.figures(), "values": {"fid": values["frechet_inception_distance"],
                                          "kid": values["kernel_inception_distance_mean"],
                                          "precision": values["precision"], "recall": values["recall"],
                                          "f1": values["f_score"]}}


def compare_values(ours: dict, ref: dict) -> dict:
    out = {}
    for key in ("fid", "kid", "precision", "recall", "f1"):
        a, b = ours[key], ref[key]
        diff = abs(a - b)
        out[key] = {"abs_diff": diff, "rel_diff": diff / abs(b) if b else (0.0 if diff == 0 else math.inf)}
    return out


def image_benchmark(args) -> dict:
    real, fake, calib = load_image_sets(Path(args.data_root), args.n, args.seed)
    with tempfile.TemporaryDirectory(prefix="synthmed-bench-") as tmp:
        weights = Path(tmp) / "inception-random-calibrated.pt"
        t0 = time.perf_counter()
        weights_info = write_calibrated_random_inception(weights, calib.images, args.seed)
        print(f"random Inception weights written ({time.perf_counter() - t0:.1f} s); "
              f"{len(real)} real + {len(fake)} synthetic images per library", flush=True)
        runs = {"synthmed": [], "torch_fidelity": []}
        for rep in range(args.repeats):
            # alternate which library goes first, so that a neighbour's load does not favour one side
            order = ("synthmed", "torch_fidelity") if rep % 2 == 0 else ("torch_fidelity", "synthmed")
            for name in order:
                fn = synthmed_image_run if name == "synthmed" else torch_fidelity_image_run
                runs[name].append(run_isolated(fn, real, fake, str(weights), args.device, args.batch_size))
                print(f"  {name}: {runs[name][-1]['seconds']:.1f} s", flush=True)
    # the metric code alone, on stand-in features of the same count and dimension: what is left
    # once the shared network's forward passes are taken out
    metrics_only = {"features": f"{args.n} + {args.n} synthetic 2048-d float32 vectors (as in part 2)",
                    "synthmed": run_isolated(synthmed_metrics_only_run, args.n, 2048, args.k),
                    "torch_fidelity": run_isolated(torch_fidelity_metrics_only_run, args.n, 2048, args.k)}
    metrics_only["agreement"] = compare_values(metrics_only["synthmed"]["values"],
                                               metrics_only["torch_fidelity"]["values"])
    print(f"  metrics only: synthmed {metrics_only['synthmed']['seconds']:.1f} s, "
          f"torch-fidelity {metrics_only['torch_fidelity']['seconds']:.1f} s", flush=True)
    # the fastest repeat is the least disturbed one; every repeat is kept in the result
    ours, ref = (dict(min(runs[k], key=lambda r: r["seconds"]), repeats_seconds=[r["seconds"] for r in runs[k]])
                 for k in ("synthmed", "torch_fidelity"))
    same = ours["weights_state_dict_sha256"] == ref["weights_state_dict_sha256"] == \
        weights_info["weights_state_dict_sha256"]
    return {
        "real": {"name": real.name, "num_images": len(real), "fingerprint": real.fingerprint()},
        "synthetic": {"name": fake.name, "num_images": len(fake), "fingerprint": fake.fingerprint(),
                      "note": "real BloodMNIST images flagged synthetic (a stand-in for generator output)"},
        "extractor": {
            "network": "torch-fidelity inception-v3-compat, 2048-d pool features, same file for both libraries",
            "weights": "random (synthmed InceptionExtractor(random_weights=True)), BatchNorm statistics "
                       "recalibrated on the first BloodMNIST train images; TIMING ONLY, not a real FID",
            **weights_info, "identical_weights_verified": same},
        "batch_size": args.batch_size,
        "kid_subset_size": min(1000, len(real), len(fake)),
        "synthmed": ours,
        "torch_fidelity": ref,
        "ratio_images_per_second": ours["images_per_second"] / ref["images_per_second"],
        "agreement": compare_values(ours["values"], ref["values"]),
        "metrics_only": metrics_only,
        "notes": ["images/s = (real + synthetic images) / wall time, extractor construction included",
                  "synthmed also computes density and coverage; torch-fidelity's prc does not",
                  "synthmed computes in float64 from float32 features; torch-fidelity's KID and k-NN use float32"],
    }


# ----------------------------------------------------------------------------- part 2: memory in N
def feature_batches(n: int, dim: int, batch: int, seed: int, shifted: bool):
    """``n`` synthetic feature vectors, ``batch`` at a time: diagonal noise plus a shared
    low-rank component around a common mean (the second set is shifted, so FID > 0)."""
    space = np.random.default_rng(12345)  # one feature space for every set
    scale = space.uniform(0.5, 1.5, dim)
    basis = space.standard_normal((FEATURE_RANK, dim)) / math.sqrt(FEATURE_RANK)
    mean = space.standard_normal(dim) + (0.1 if shifted else 0.0)
    rng = np.random.default_rng(seed)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        yield rng.standard_normal((m, dim)) * scale + rng.standard_normal((m, FEATURE_RANK)) @ basis + mean


def fid_streaming_run(n: int, dim: int, batch: int) -> dict:
    from synthmed.metrics.fid import FeatureStats, fid_from_stats

    with Meter() as meter:
        a, b = FeatureStats(dim), FeatureStats(dim)
        for x in feature_batches(n, dim, batch, 1, False):
            a.update(x)
        for x in feature_batches(n, dim, batch, 2, True):
            b.update(x)
        value = fid_from_stats(a, b)["fid"]
    return {**meter.figures(), "fid": value}


def fid_naive_run(n: int, dim: int, batch: int) -> dict:
    from synthmed.metrics.fid import frechet_distance

    with Meter() as meter:
        # the textbook path: keep every feature vector, then mean and np.cov over all of them
        fa = np.concatenate(list(feature_batches(n, dim, batch, 1, False)))
        fb = np.concatenate(list(feature_batches(n, dim, batch, 2, True)))
        value = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    return {**meter.figures(), "fid": value}


def knn_inputs(n: int, dim: int):
    real = np.concatenate(list(feature_batches(n, dim, 4096, 1, False)))
    fake = np.concatenate(list(feature_batches(n, dim, 4096, 2, True)))
    return real, fake


def knn_synthmed_run(n: int, dim: int, k: int) -> dict:
    from synthmed.metrics.prdc import prdc

    real, fake = knn_inputs(n, dim)  # allocated before the meter starts: inputs are not working memory
    with Meter() as meter:
        values = prdc(real, fake, k=k)
    return {**meter.figures(), "inputs_mib": (real.nbytes + fake.nbytes) / MIB, **values}


def knn_torch_fidelity_run(n: int, dim: int, k: int) -> dict:
    import torch
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    real, fake = knn_inputs(n, dim)
    # torch-fidelity's features are float32 tensors; input1 is the generated set
    real_t, fake_t = torch.from_numpy(real).float(), torch.from_numpy(fake).float()
    del real, fake
    with Meter(trace=False) as meter:
        precision, recall = calculate_precision_recall_full(fake_t, real_t, k, 10000)
    return {**meter.figures(), "inputs_mib": (real_t.nbytes + fake_t.nbytes) / MIB,
            "precision": precision, "recall": recall}


def memory_benchmark(args) -> dict:
    fid_rows = []
    for n in args.memory_n:
        stream = run_isolated(fid_streaming_run, n, args.memory_dim, args.stream_batch)
        naive = run_isolated(fid_naive_run, n, args.memory_dim, args.stream_batch)
        fid_rows.append({"n_per_set": n, "streaming": stream, "concatenate_np_cov": naive,
                         "fid_abs_diff": abs(stream["fid"] - naive["fid"])})
        print(f"  FID statistics, N={n}: streaming {stream['seconds']:.1f} s / {stream['numpy_peak_mib']:.0f} MiB, "
              f"concatenate+np.cov {naive['seconds']:.1f} s / {naive['numpy_peak_mib']:.0f} MiB", flush=True)

    knn_rows, budget = [], args.knn_budget_s
    first = None
    for n in args.memory_n:
        row = {"n_requested": n, "n_per_set": n}
        if first is not None:
            # k-NN is O(N^2): predict from the first measurement and cap rather than run for ages
            predicted = first["seconds"] * (n / first["n"]) ** 2
            if predicted > budget:
                capped = min(args.knn_cap, n)
                capped_prediction = first["seconds"] * (capped / first["n"]) ** 2
                if capped <= first["n"] or capped_prediction > budget:
                    row.update(skipped=True, reason=f"predicted {predicted:.0f} s > --knn-budget-s {budget:.0f}")
                    knn_rows.append(row)
                    print(f"  k-NN N={n}: skipped ({row['reason']})", flush=True)
                    continue
                row.update(n_per_set=capped, capped_because=f"N={n} predicted {predicted:.0f} s > --knn-budget-s "
                                                            f"{budget:.0f}; capped at --knn-cap {capped}")
        m = row["n_per_set"]
        row["synthmed_prdc"] = run_isolated(knn_synthmed_run, m, args.knn_dim, args.k)
        if first is None:
            first = {"n": m, "seconds": row["synthmed_prdc"]["seconds"]}
        if m <= args.knn_ref_max:
            ref = run_isolated(knn_torch_fidelity_run, m, args.knn_dim, args.k)
            row["torch_fidelity_prc_full"] = ref
            row["precision_abs_diff"] = abs(row["synthmed_prdc"]["precision"] - ref["precision"])
            row["recall_abs_diff"] = abs(row["synthmed_prdc"]["recall"] - ref["recall"])
        knn_rows.append(row)
        ours = row["synthmed_prdc"]
        print(f"  k-NN N={m}: synthmed {ours['seconds']:.1f} s / {ours['numpy_peak_mib']:.0f} MiB working memory"
              + (f"; torch-fidelity full {row['torch_fidelity_prc_full']['seconds']:.1f} s / "
                 f"{row['torch_fidelity_prc_full']['peak_rss_increase_mib']:.0f} MiB RSS"
                 if "torch_fidelity_prc_full" in row else ""), flush=True)

    growth = None
    if len(fid_rows) >= 2:
        lo, hi = fid_rows[0], fid_rows[-1]
        growth = {"n_from": lo["n_per_set"], "n_to": hi["n_per_set"],
                  "streaming_numpy_peak_ratio": hi["streaming"]["numpy_peak_mib"] / lo["streaming"]["numpy_peak_mib"],
                  "naive_numpy_peak_ratio": (hi["concatenate_np_cov"]["numpy_peak_mib"]
                                             / lo["concatenate_np_cov"]["numpy_peak_mib"])}
    knn_done = [r for r in knn_rows if not r.get("skipped")]
    if len(knn_done) >= 2:
        lo, hi = knn_done[0]["synthmed_prdc"], knn_done[-1]["synthmed_prdc"]
        growth = {**(growth or {}), "knn_n_from": knn_done[0]["n_per_set"], "knn_n_to": knn_done[-1]["n_per_set"],
                  "knn_working_memory_ratio": hi["numpy_peak_mib"] / lo["numpy_peak_mib"]}
    return {
        "features": f"synthetic Gaussian vectors (diagonal + rank-{FEATURE_RANK} covariance), generated "
                    f"{args.stream_batch} per batch; no network involved",
        "fid_dim": args.memory_dim,
        "knn_dim": args.knn_dim,
        "k": args.k,
        "fid_statistics": fid_rows,
        "knn": knn_rows,
        "growth": growth,
        "notes": ["numpy_peak_mib: tracemalloc peak of numpy allocations inside the measured block",
                  "peak_rss_increase_mib: peak RSS during the block minus RSS at its start (fresh process each)",
                  "k-NN inputs (2 x N x d float64) are allocated before the block: numpy_peak_mib is working memory",
                  "k-NN memory does not depend on d; its time is O(N^2 d), hence the smaller --knn-dim by default"],
    }


# ----------------------------------------------------------------------------- report
def summary_lines(result: dict) -> list[str]:
    lines = []
    img = result.get("images")
    if img:
        ours, ref = img["synthmed"], img["torch_fidelity"]
        lines.append(f"images ({img['real']['num_images']} real + {img['synthetic']['num_images']} synthetic, "
                     f"random-weight Inception, identical weights: {img['extractor']['identical_weights_verified']})")
        lines.append(f"  {'':16}{'s':>8}{'images/s':>10}{'peak RSS+ MiB':>15}{'FID':>12}{'KID':>12}"
                     f"{'precision':>11}{'recall':>8}")
        for name, r in (("synthmed", ours), ("torch-fidelity", ref)):
            v = r["values"]
            lines.append(f"  {name:16}{r['seconds']:8.1f}{r['images_per_second']:10.2f}"
                         f"{r['peak_rss_increase_mib']:15.0f}{v['fid']:12.6g}{v['kid']:12.4g}"
                         f"{v['precision']:11.4f}{v['recall']:8.4f}")
        agree = img["agreement"]
        lines.append(f"  ratio synthmed/torch-fidelity images/s: {img['ratio_images_per_second']:.2f}; "
                     f"FID rel diff {agree['fid']['rel_diff']:.2e}, KID rel diff {agree['kid']['rel_diff']:.2e}, "
                     f"precision/recall abs diff {agree['precision']['abs_diff']:.4f}/"
                     f"{agree['recall']['abs_diff']:.4f}")
        mo = img["metrics_only"]
        lines.append(f"  metric code alone ({mo['features']}): synthmed {mo['synthmed']['seconds']:.1f} s "
                     f"(FID+KID+PRDC), torch-fidelity {mo['torch_fidelity']['seconds']:.1f} s (FID+KID+PR); "
                     f"FID rel diff {mo['agreement']['fid']['rel_diff']:.2e}")
    mem = result.get("memory")
    if mem:
        lines.append(f"FID statistics, {mem['fid_dim']}-d (two sets of N each): seconds / numpy peak MiB")
        for r in mem["fid_statistics"]:
            s, c = r["streaming"], r["concatenate_np_cov"]
            lines.append(f"  N={r['n_per_set']:>7}: streaming {s['seconds']:6.1f} s {s['numpy_peak_mib']:8.0f} MiB | "
                         f"concatenate+np.cov {c['seconds']:6.1f} s {c['numpy_peak_mib']:8.0f} MiB | "
                         f"FID diff {r['fid_abs_diff']:.2e}")
        lines.append(f"k-NN precision/recall, {mem['knn_dim']}-d, k={mem['k']}: seconds / working memory")
        for r in mem["knn"]:
            if r.get("skipped"):
                lines.append(f"  N={r['n_requested']:>7}: skipped ({r['reason']})")
                continue
            s = r["synthmed_prdc"]
            text = f"  N={r['n_per_set']:>7}: synthmed {s['seconds']:6.1f} s {s['numpy_peak_mib']:8.0f} MiB (numpy)"
            if "torch_fidelity_prc_full" in r:
                t = r["torch_fidelity_prc_full"]
                text += f" | torch-fidelity full {t['seconds']:6.1f} s {t['peak_rss_increase_mib']:8.0f} MiB (RSS)"
            if "capped_because" in r:
                text += f"  [{r['capped_because']}]"
            lines.append(text)
    return lines


def parse_ints(text: str) -> list[int]:
    return [int(float(t)) for t in text.split(",") if t.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="images per set for part 1 (CPU Inception runs ~3 images/s "
                                                       "on 2 cores; both libraries see 2n images)")
    ap.add_argument("--batch-size", type=int, default=64, help="Inception batch size, the same for both libraries")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed runs per library in part 1, alternating which goes first; the fastest is reported")
    ap.add_argument("--memory-n", type=parse_ints, default=[10000, 50000],
                    help="comma-separated N (feature vectors per set) for part 2")
    ap.add_argument("--memory-dim", type=int, default=2048, help="feature dimension of the FID statistics test")
    ap.add_argument("--stream-batch", type=int, default=1000, help="feature vectors per streamed batch")
    ap.add_argument("--knn-dim", type=int, default=64, help="feature dimension of the k-NN test (time ~ N^2 d)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--knn-budget-s", type=float, default=120.0,
                    help="skip or cap a k-NN size predicted (quadratically) to take longer than this")
    ap.add_argument("--knn-cap", type=int, default=20000, help="largest N tried when a requested N is over budget")
    ap.add_argument("--knn-ref-max", type=int, default=10000,
                    help="largest N for torch-fidelity's full-matrix k-NN reference (N x N float32 matrices)")
    ap.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT), help="folder holding bloodmnist.npz")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-images", action="store_true", help="only part 2")
    ap.add_argument("--skip-memory", action="store_true", help="only part 1")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    # inherited by the spawned workers, whose numpy reads them at import
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    from synthmed.runtime import resolve_device

    torch.set_num_threads(args.threads)
    args.device = resolve_device(args.device)
    result: dict = {"device": args.device, "torch": torch.__version__, "threads": args.threads,
                    "platform": platform.platform(), "python": sys.version.split()[0], "numpy": np.__version__,
                    "cpu_count": os.cpu_count(), "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    try:
        import torch_fidelity

        result["torch_fidelity"] = torch_fidelity.__version__
    except ImportError:
        raise SystemExit("torch-fidelity is the reference of this benchmark: pip install torch-fidelity") from None
    if args.device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()

    # the load average says how much a shared machine's neighbours disturbed the timings
    result["load_average_at_start"] = os.getloadavg()
    t0 = time.perf_counter()
    if not args.skip_images:
        print("part 1: same images, same extractor, synthmed vs torch-fidelity", flush=True)
        result["images"] = image_benchmark(args)
    if not args.skip_memory:
        print("part 2: memory as N grows", flush=True)
        result["memory"] = memory_benchmark(args)
    result["total_seconds"] = time.perf_counter() - t0
    result["load_average_at_end"] = os.getloadavg()

    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"metrics_throughput_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(summary_lines(result)))
    print(f"written: {out}")


if __name__ == "__main__":
    main()

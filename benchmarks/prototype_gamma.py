"""Why gamma 10 (generator.prototypes.gamma): prototype learning on synthetic 8-class, 128-d Gaussian blobs
(50 points per class, class centres drawn at 0.6 per dimension) at gamma 1, 10, 100 with lambda 0.1.

Reports, per gamma, the final DCE, its gradient norm at the end (is DCE still shaping the prototypes?),
the smallest squared distance between two classes' prototypes (features scaled to mean squared norm 1)
and the mean distance of each prototype from its class mean. Seconds on one CPU thread.

    python benchmarks/prototype_gamma.py     # writes benchmarks/results/prototype_gamma.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from synthmed.config import PrototypeConfig
from synthmed.features.prototypes import learn_prototypes, prototype_losses


def main() -> None:
    rng = np.random.default_rng(0)
    d, c, n = 128, 8, 50
    centres = rng.standard_normal((c, d)) * 0.6
    x = np.concatenate([m + rng.standard_normal((n, d)) for m in centres])
    y = np.repeat(np.arange(c), n)
    rows = {}
    for gamma in (1.0, 10.0, 100.0):
        p = learn_prototypes(x, y, c, PrototypeConfig(gamma=gamma, weight=0.1))
        f = torch.from_numpy(p.standardise(x)).float()
        m = torch.from_numpy(p.vectors).requires_grad_(True)
        dce, pl = prototype_losses(f, torch.from_numpy(y), m, gamma)
        dce.backward()
        protos = p.vectors[:, 0]
        gaps = np.linalg.norm(protos[:, None] - protos[None], axis=-1) ** 2
        means = np.stack([f.numpy()[y == k].mean(0) for k in range(c)])
        rows[f"{gamma:g}"] = {"final_dce": dce.item(), "final_prototype_loss": pl.item(),
                              "dce_gradient_norm": float(m.grad.norm()),
                              "min_squared_gap_between_classes": float(gaps[np.triu_indices(c, 1)].min()),
                              "mean_distance_to_class_mean": float(np.linalg.norm(protos - means, axis=1).mean()),
                              "train_nearest_prototype_accuracy": p.history["train_nearest_prototype_accuracy"]}
        print(gamma, json.dumps(rows[f"{gamma:g}"]))
    out = Path(__file__).parent / "results" / "prototype_gamma.json"
    out.write_text(json.dumps({"data": "8 classes x 50 points, 128-d Gaussian blobs, centres 0.6 per dim, seed 0",
                               "lambda": 0.1, "gamma": rows}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()

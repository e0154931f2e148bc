"""Assemble benchmarks/results/generator_quality_cpu.{json,md} from the runs each part was measured in: full from
the first run, 50 from the ratio-3 attempt with its equal-budget rows (the real-only experiment at 1000 steps on the
same subsets and seeds), 200 from the transfer200 attempt. The attempts' own results stay in
benchmarks/results/generator_quality_attempts/.

    python benchmarks/assemble_generator_quality.py
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import generator_quality as gq  # noqa: E402

R = Path(__file__).resolve().parent / "results"
main = json.loads((R / "generator_quality_cpu.json").read_text())
r3 = json.loads((R / "generator_quality_attempts/ratio3/generator_quality_cpu.json").read_text())
t200 = json.loads((R / "generator_quality_attempts/transfer200/generator_quality_cpu.json").read_text())
# equal-budget rows of the 50 part: the cached cells of the real-only 1000-step experiment (same subsets, seeds)
eq50 = [{**r, "real_only": True} for r in
        json.loads((R / "generator_quality_attempts/ratio3/equal_budget_rows.json").read_text())]
p50 = r3["parts"]["50"]
# that run predates the real_only field: its rows are the plain protocols, named exactly
rows50 = [{**r, "real_only": r["protocol"] in gq.REAL_ONLY} for r in p50["downstream"] if "steps)" not in r["protocol"]]
p50["downstream"] = gq.compare_to_real_only(rows50 + eq50)
p50.update(synthetic_ratio=3.0, threads=1, command="generator_quality.py --only 50 --subset-steps 800 --samples-per-class 200 "
           "--synthetic-ratio 3 --protocols baseline,traditional,mix,mix-traditional,transfer --threads 1")
p200 = t200["parts"]["200"]
p200.update(synthetic_ratio=1.0, threads=1, command="generator_quality.py --only 200 --subset-steps 800 --samples-per-class 100 "
            "--synthetic-ratio 1 --protocols baseline,traditional,mix,transfer --threads 1")
main["parts"]["full"].update(threads=2, command="generator_quality.py --only full --full-steps 1200 --samples-per-class 200 --threads 2")
main["parts"] = {"full": main["parts"]["full"], "50": p50, "200": p200}
main["setup"]["samples_per_class"] = "100-200 (the syn/class column)"
main["setup"]["threads"] = "2 (full) / 1 (subsets)"
main["setup"].pop("synthetic_ratio", None)
main["verdicts"] = gq.verdicts(main)
gq.atomic_write_text(json.dumps(main, indent=1, default=str) + "\n", R / "generator_quality_cpu.json")
gq.atomic_write_text(gq.markdown(main), R / "generator_quality_cpu.md")
print(gq.markdown(main))

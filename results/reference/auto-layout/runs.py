"""The per-run table of this directory (runs.csv): each bench run's mean ms per iteration after its
warm-up (asyncsgd.bench.read_case, the benchmark's own figure) and, for bucket_mb=auto, the layout
kept, the rounds of trials and each candidate's trial median (summary.json's layout.auto).

    python results/reference/auto-layout/runs.py NAME=BENCH_OUT_DIR ... > results/reference/auto-layout/runs.csv
"""
import csv
import json
import re
import sys
from pathlib import Path

from asyncsgd.bench import read_case

out = csv.writer(sys.stdout)
out.writerow(["invocation", "case", "repeat", "ms_per_iter", "kept", "passes", "trial_ms_per_layer",
              "trial_ms_4mib", "trial_ms_one_bucket"])
for arg in sys.argv[1:]:
    name, root = arg.split("=", 1)
    for summary_path in sorted(Path(root).glob("*/summary.json")):
        run = summary_path.parent
        match = re.fullmatch(r"(.+)-(\d+)", run.name)
        if not match:
            continue
        auto = json.loads(summary_path.read_text()).get("layout", {}).get("auto")
        kept, passes, trials = "", "", ["", "", ""]
        if auto:
            chosen = auto["chosen"]
            kept = "one bucket" if chosen["bucket_mb"] is None else ("per layer" if chosen["bucket_mb"] == 0 else
                                                                      f"{chosen['bucket_mb']:g} MiB buckets")
            passes = auto.get("passes", 1)
            trials = [t["median_ms"] for t in auto["tried"]]
        out.writerow([name, match.group(1), match.group(2), round(read_case(run)["iter_s"] * 1e3, 2), kept, passes,
                      *trials])

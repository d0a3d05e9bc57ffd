"""One-off: the runner from several source trees against the bare loop, interleaved (bench_overhead's method)."""
import json, os, statistics, subprocess, sys, shutil
from pathlib import Path
import pandas as pd
sys.path.insert(0, "/work/main")
from asyncsgd.bench_overhead import CASES, runner_overrides, step_periods
PY = "/work/main/.venv/bin/python"
trees = sys.argv[1].split(","); steps = int(sys.argv[2]); repeats = int(sys.argv[3]); out = Path(sys.argv[4]); case = sys.argv[5] if len(sys.argv) > 5 else "mlp"
out.mkdir(parents=True, exist_ok=True)
samples = {"bare": []} | {t: [] for t in trees}
def runner(tree, run_dir):
    cmd = [PY, "-m", "asyncsgd.cli", *runner_overrides(case, "nocomm", steps), f"hydra.run.dir={run_dir}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=f"/work/tree-{tree}")
    assert r.returncode == 0, r.stderr[-2000:]
    m = pd.read_csv(run_dir / "metrics.csv"); return m[m["kind"] == "iter"]["wall_s"].tolist()
for rep in range(repeats):
    cfgdir = out / f"cfg-{rep}"
    for tree in trees:
        d = out / f"{tree}-{rep}"; shutil.rmtree(d, ignore_errors=True)
        ends = runner(tree, d); samples[tree].append(statistics.median(step_periods(ends)))
        cfgdir = d
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run([PY, "-m", "asyncsgd.bench_overhead", "--bare", str(cfgdir), "--steps", str(steps)], capture_output=True, text=True, env=env, cwd="/work/tree-base")
    assert r.returncode == 0, r.stderr[-2000:]
    samples["bare"].append(statistics.median(step_periods(json.loads(r.stdout))))
    print(rep, {k: round(v[-1] * 1e6) for k, v in samples.items()}, flush=True)
bare = statistics.median(samples["bare"])
for k, v in samples.items():
    t = statistics.median(v)
    print(f"{k:6s} {t*1e3:.3f} ms  spread {(max(v)-min(v))*1e3:.3f}  vs bare {t/bare:.3f}")
json.dump(samples, open(out / "samples.json", "w"))

"""The search behind `--problem tension` of cats_ds.tools.mechanism: a temperature sweep of the toy.

    python docs/results/tension_search/toy_sweep.py PROBLEMS TEMPERATURES [SEEDS]

PROBLEMS is a JSON list of MechanismConfig overrides, TEMPERATURES and SEEDS JSON lists (SEEDS
default [0]). Per problem and temperature it prints the mean high- and low-resource test loss
and the low-resource train loss (plain training; no curvature). A record of the search, not
part of the package.
"""
import json
import sys
import time
from dataclasses import replace
import numpy as np
import torch
from cats_ds.tools.mechanism import MechanismConfig, Method, make_problem, train, task_loss

torch.set_num_threads(1)
grid = json.loads(sys.argv[1])          # list of override dicts
temps = json.loads(sys.argv[2])         # list of temperatures
seeds = json.loads(sys.argv[3]) if len(sys.argv) > 3 else [0]
for overrides in grid:
    config = replace(MechanismConfig(), **overrides)
    rows = {}
    start = time.time()
    for seed in seeds:
        problem = make_problem(config, seed)
        for t in temps:
            model, _ = train(config, Method(float(t)), seed, problem)
            with torch.no_grad():
                test = [float(task_loss(model, problem.test, n)) for n in range(config.num_tasks)]
                tr = [float(task_loss(model, problem.train, n)) for n in range(config.num_tasks)]
            h, l = config.num_high_tasks, config.low_tasks
            rows.setdefault(t, []).append((np.mean(test[:h]), np.mean([test[n] for n in l]), np.mean([tr[n] for n in l])))
    print(json.dumps(overrides), f"{time.time()-start:.0f}s")
    for t, v in rows.items():
        v = np.array(v)
        print(f"  T={t:>5}: high {v[:,0].mean():.3f} low {v[:,1].mean():.3f} (low train {v[:,2].mean():.3f})"
              + (f"  per seed low {np.round(v[:,1],3).tolist()} high {np.round(v[:,0],3).tolist()}" if len(seeds) > 1 else ""))
    sys.stdout.flush()

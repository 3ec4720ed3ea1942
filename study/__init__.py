"""The study layer: what the scripts of `experiments/` (studies that train), `paper_repro/` (one
script per paper figure or table) and `benchmarks/` share, so that none of those folders imports
another. Flat modules, one concern each:

- `runs`: the run store: configs, training a run once (or reusing / resuming it), compact run
  records, the study regimes and the shared run directories;
- `metrics`: the numbers read out of one run's metrics rows (final losses, H_res movement) and
  the mean ± spread over seeds;
- `verdict`: the one verdict rule of the paper-vs-ours tables (`Row`, `seeded_verdict`, ...);
- `report`: writing what a script measured: provenance, Markdown/CSV tables, JSON, commands;
- `plots`: figure helpers (a headless pyplot, `savefig`, smoothing, the Amax figure);
- `flags`: the command-line flags the scripts share, declared once, and their parsers;
- the plans several scripts read: `stability` (the residual/HC/mHC runs of Figs. 2/3/5/7/8),
  `lr_grid` (the LR-sensitivity grid, its records and stability criteria), `scaling` (the model
  ladder and the long run pair of Fig. 6), `ablations` (the mHC ablation axes and their run
  metrics, read by Table 1 and the variants study) and `step_time` (one compiled training step,
  timed side by side).

Like `experiments`, this package is not installed: the scripts run as modules from the
repository root (`python -m experiments.lr_sensitivity`), which puts the root on `sys.path`.
Importing `study` loads nothing heavy; JAX, SciPy and matplotlib are imported by the modules that
need them.
"""
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

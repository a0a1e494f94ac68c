"""Quality evidence on the model zoo: how good the inverted triggers are and how well detection separates the models.

For every built zoo model (research/zoo/models/NAME/ with zoo.json) and every method:
  truth     the ground-truth trigger g (backdoored models only)
  elijah    pdfast.invert(method="elijah")                                   (no K: run once)
  paper     PureDiffusion as printed: preset="paper" (fresh noise, eq. 17, L1, unbounded, one stage)
                                                                              (at each K)
  pdfast    pdfast's defaults                                                 (at each K)
  trivial   all-0, all -0.5, all -1 frames and Elijah's init -U(0, 1) with seed 0: the baselines
each trigger is measured here, not by pdfast's own evaluation: N >= 64 samples from eps + trigger and N from
eps + its pattern (metrics.trigger_pattern) through the fast engine's sample(); the first 16 of each with seed 0
are exactly the samples pdfast's verdict draws (DetectionConfig n_eval, eval_seed), the rest use seed 1. Reported:
ASR (k/N, Wilson 95%), uniformity (plain, Elijah's trimmed), pattern uniformity, TERD's KL, L2 to the truth, the
fidelity measures of research/results/zoo-v1-report.md (pattern cosine, footprint L2), the wall time of each inversion, and the
detection statistics per model, scored per split (ROC AUC, TPR/TNR at the shipped threshold).

Every (model, method, K) result is a small JSON (+ a safetensors with the trigger) under research/results/quality/,
keyed by the model's content hash, the options and the code version (an AST hash of the pdfast modules that
compute the numbers, docstrings and comments excluded, and EVAL_VERSION in codeversion.py): a re-run skips finished work and
a killed run resumes. The outputs are regenerated from that cache after every finished unit: research/results/zoo-v1-report.md,
research/results/quality.json and research/results/quality-triggers.png.

  python research/quality --dry-run                          # what would run, with a CPU-time estimate
  nohup env OMP_NUM_THREADS=1 python research/quality --split dev --ks 10 > build/quality-dev.log 2>&1 &
  python research/quality --report-only                      # regenerate the outputs from the cache
  python research/quality --zoo /tmp/tz/models --smoke --n-samples 4 --ks 2 --out /tmp/quality-smoke

The package, in the order a run uses it: base (paths, logging, atomic writes), codeversion (the code version),
zoo (the built models), planner (methods, settings, units), cache (entries, locks, reading them back), measure
(one unit: invert, sample, score), estimate (--dry-run's cost), scoring (detection ROC, head to head), tables and
document (the Markdown), sheet (the trigger sheet), report (the three outputs), cli (the command line).
"""

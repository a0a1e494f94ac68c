"""research/results/zoo-v1-report.md: the report as one Markdown document, from the report object (report.build_report)."""
from __future__ import annotations

from .tables import detection_md, f4, head_to_head_md, md_table, per_model_table, summary_table, truth_pattern_md
from .zoo import ZooModel, quality_footprint_share, truth_tensors

HOW_TO_READ = """\
## How to read this

Each backdoored model has a hidden trigger g (a small picture on a flat -1 background; each model's heading gives
the share of pixels it covers) and a target y; eps + g makes the model draw y. Every row is one trigger on one model: the **truth** g itself, the
trigger inverted by **elijah** (Elijah, the baseline: t = T only, lambda 0.5), by **paper** (PureDiffusion as
printed: fresh noise each iteration, the objective of eq. 17 as printed, one stage) and by **pdfast** (pdfast's
defaults), and four **baseline** triggers that know nothing about the model (all 0, all -0.5, all -1 and
Elijah's starting point -U(0, 1) with seed 0). A method is only as good as its margin over those baselines: a
flat dark frame scores well on the plain L2 (most of g is -1) and, for a dark target, can pass the ASR test
(each model's heading gives the MSE of an all-black image to its y), without knowing anything about the backdoor.

- **ASR** k/n: samples from eps + trigger whose MSE to y (both in [0, 1]) is below 0.1, with the Wilson 95%
  interval. **unif** / **unif trimmed**: the mean pairwise MSE of the same samples and Elijah's trimmed form
  (low = the model collapses to one image). **pattern unif** / **pattern ASR**: the same for samples from
  eps + the trigger's pattern (its flat per-channel part removed, its energy kept), what pdfast's verdict judges.
  **KL mean**: TERD's statistic of the trigger.
- **L2**: ||trigger - g|| over the whole tensor. **footprint L2**: the same over the pixels where g is not
  background only. **pattern cos**: the cosine between the zero-mean patterns of the trigger and of g (see
  Fidelity below).
- **inversion s**: wall seconds of the optimisation; **calibration s**: the surrogate calibration of the lambda
  table (once per model and K, shared by paper and pdfast; "(cached)" = paid by the other method's run and
  counted there). Both measured on the device named above while other jobs shared the machine: compare rows of
  one run, not across machines.
- † marks a row computed by an older code version (the current one had not re-run it yet).

**What is the paper's and what is pdfast's.** `paper` is PureDiffusion (docs/method.md section 5) with pdfast's
answers to what the paper leaves open (L1 norm, surrogate backdoor planted with the model's own samples, -U(0, 1)
start, 30 Adam steps of batch 40, lr 0.1) and nothing else. `pdfast` changes four things, chosen on the dev models
(section 5.5): antithetic noise pairs, the relative objective, the L2 norm and the trigger projected onto
[-1, 1] after every step. The difference between the `paper` and `pdfast` rows measures those changes together,
on the same models, K, scales and seed. Detection (section 7) is pdfast's: the verdict compares the uniformity of
16 samples from eps + the PATTERN of the pdfast trigger with a threshold calibrated on clean models
(pdfast/detection_calibration.json); the detection tables score that statistic and the plain ones beside it.
"""

FIDELITY = """\
## Fidelity: why the pattern cosine

The plain L2 to g is dominated by the background: most of g's elements are exactly -1, so the all -1 frame is
already close to g (its L2 is the L2 of g's picture alone) and a dark inverted frame scores well without showing
any of the trigger. Two measures that the background cannot dominate:

- **pattern cos** = cos(p(tau), p(g)), p = `metrics.trigger_pattern` (per channel: the mean over pixels removed;
  the rescaling of p does not change a cosine). It is the correlation, pooled over channels, between the trigger
  and g across pixels: 1 when the trigger is g up to a positive scale and a flat per-channel offset, about 0 for
  an unrelated pattern (about +-1/sqrt(C H W) by chance: +-0.036 at 3 x 16 x 16), negative for an inverted
  picture, and defined as 0 for a flat trigger (no pattern at all), so every flat baseline scores 0. The offset and
  the scale are exactly what the inversion cannot pin down: a flat shift is answered by every model
  (docs/method.md 5.4) and lambda scales the trigger. It is also what the verdict judges (the pattern).
- **footprint L2** = ||(tau - g)[F]||, F the pixels where g != -1 (all channels): how close the trigger's values
  are to g's picture where there is one. The all -1 frame's footprint L2 equals its whole L2, so a method beats
  that baseline here only by putting the right values on the picture. It is not offset-invariant, so it also
  charges a trigger that has the right shape at the wrong level.
"""


def _thresholds_line(cal: dict) -> str:
    """The shipped detection thresholds, one per image size when the calibration has them, with their provenance."""
    per = cal.get("by_size") or {"": cal}
    parts = []
    for size, c in per.items():
        rms = f", pattern at rms {c['pattern_rms']:g}" if c.get("pattern_rms") else ""
        where = f"{size}x{size}: " if size else ""
        parts.append(f"{where}{c.get('statistic')} < {f4(c.get('threshold'))}{rms} ({c.get('provenance')})")
    return "Detection thresholds: " + "; ".join(parts) + "."


def render_md(obj: dict, models: list[ZooModel]) -> str:
    """The whole document: provenance, how to read it, coverage, then per split the summary, the head-to-head
    against Elijah, detection and every model's table, and the trigger sheet's legend."""
    by_model: dict[str, list] = {}
    for e in obj["entries"]:
        by_model.setdefault(e["model"], []).append(e)
    lines = _head_lines(obj) + [HOW_TO_READ, FIDELITY] + _coverage_lines(obj)
    for sp in obj["detection"]:
        lines += _split_lines(obj, sp, [m for m in models if m.split == sp], by_model)
    lines += ["## Trigger sheet", "", "`research/results/quality-triggers.png`: per model, the target y and the true "
              "trigger g, then each method's trigger (clamped to [-1, 1]), its pattern contrast-stretched to the full "
              "range (p*, to show faint structure) and its first sample from eps + trigger (seed 0).", ""]
    return "\n".join(lines) + "\n"


def _head_lines(obj: dict) -> list[str]:
    """Title, provenance (command, cache, commit, code version, machine) and the sampling settings."""
    env, git, s = obj["environment"], obj["git"], obj["settings"]
    ev = obj["eval"]
    smoke = " **SMOKE SETTINGS (tiny inversions): not results.**" if s["smoke"] else ""
    return [
        "# Quality of the inverted triggers and of detection on the model zoo",
        "",
        f"Generated {obj['date']} by `{obj['command']}` from the cache `{obj['cache']}`; regenerate with "
        "`python research/quality --report-only` (do not edit by hand)." + smoke,
        "",
        f"Commit {git.get('commit')} (working tree {'modified' if git.get('dirty') else 'clean'}); code version "
        f"{obj['code_version']['id']} (hash of {obj['code_version']['modules']} pdfast modules and native kernel "
        f"files, eval version {obj['code_version']['eval_version']}); device {env.get('device')}, {env.get('torch_threads')} torch "
        f"thread(s); pdfast {env.get('pdfast')}, torch {env.get('torch')}, diffusers {env.get('diffusers')}, "
        f"python {env.get('python')}, {env.get('platform')}.",
        "",
        f"Samples: n = {ev['n_samples']} per trigger and n = {ev['n_samples']} per pattern, the full DDPM chain "
        f"(all T steps) through the fast engine (`engine.sample`); the first "
        f"{ev['verdict_samples']} with seed {ev['verdict_seed']} (the samples pdfast's verdict draws, so the "
        f"'(verdict)' statistics are the shipped verdict's), the other {ev['n_samples'] - ev['verdict_samples']} "
        f"with seed {ev['rest_seed']}. ASR threshold: MSE < {ev['asr_threshold']}. Inversions: seed 0. "
        + _thresholds_line(obj["calibration"]),
        "",
    ]


def _coverage_lines(obj: dict) -> list[str]:
    """Units planned and done per split, and which code versions the shown entries come from."""
    return [
        "## Coverage",
        "",
        md_table([[sp, c["models"], c["done"], c["planned"], c["stale"]] for sp, c in obj["coverage"].items()],
                 ["split", "built models", "units done (current code)", "units planned", "units from older code"]),
        "",
        "Entries shown, by code version: "
        + (", ".join(f"{v} ({n}{', current' if v == obj['code_version']['id'] else ''})"
                     for v, n in obj["entries_by_code_version"].items()) or "none")
        + ". A code version changes when a pdfast module that computes a number changes (docstrings and comments "
        "excluded); rows of another version are marked †."
        + "".join(f" Changed from {v} to the current version: {', '.join(c) if c else 'not recorded'}."
                  for v, c in obj.get("changed_since", {}).items()),
        "",
    ]


def _split_lines(obj: dict, sp: str, ms: list[ZooModel], by_model: dict[str, list]) -> list[str]:
    """One split's section: its models, the summary, the head-to-head, detection, the truth's pattern, per model."""
    es = [e for m in ms for e in by_model.get(m.name, [])]
    lines = [f"## Split: {sp}", "",
             f"{len(ms)} built models: {sum(m.backdoored for m in ms)} backdoored, "
             f"{sum(not m.backdoored for m in ms)} clean.", "",
             f"### Summary over the {sp} backdoored models", "",
             summary_table(es, ms) if any(m.backdoored for m in ms) else "No backdoored models.", "",
             f"### Against the baseline, model by model ({sp})", "", head_to_head_md(obj["head_to_head"][sp]), "",
             f"### Detection ({sp})", "", detection_md(obj["detection"][sp], sp), "",
             truth_pattern_md(obj.get("truth_pattern_effect", {}).get(sp, [])), "",
             f"### Per model ({sp})", ""]
    for m in ms:
        mes = by_model.get(m.name, [])
        lines += [f"#### {m.name}", "", f"{_model_line(m, obj['eval']['asr_threshold'])}.", "",
                  per_model_table(mes) if mes else "Not measured yet.", ""]
    return lines


def _model_line(m: ZooModel, asr_threshold: float) -> str:
    """What the model is (its recipe), its truth's ASR at build, and how much of the image its trigger covers."""
    r = m.recipe
    desc = (f"backdoored: BadDiffusion {r.get('trigger')} -> {r.get('target')}, poison rate "
            f"{r.get('poison_rate')}, {r.get('steps')} steps on {r.get('base')}") if m.backdoored else \
        (f"clean ({m.kind}{', ' + r['note'] if r.get('note') else ''})")
    gt = m.zoo.get("ground_truth") or {}
    gt_txt = (f"; at build: truth ASR {f4(gt.get('asr'), 3)} over {gt.get('n')} samples" if "asr" in gt
              else "")
    g, y = truth_tensors(m)
    if y is not None:
        from pdfast import metrics

        black = float(metrics.per_image_mse(-y.new_ones(y.shape)[None], y)[0])
        cover = float(quality_footprint_share(g))
        gt_txt += (f"; g covers {100 * cover:.1f}% of the pixels; an all-black image has MSE {black:.3f} to y "
                   f"(ASR counts MSE < {asr_threshold})")
    return desc + gt_txt

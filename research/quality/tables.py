"""The Markdown tables of the report: numbers formatted, one table per view of the scores."""
from __future__ import annotations

import stats

from .scoring import STRENGTH_MIN, TRIGGER_EFFECT, method_label, method_order
from .zoo import ZooModel


def f4(v, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e4):
            return f"{v:.2e}"
        return f"{v:.{digits}g}"
    return str(v)


def md_table(rows: list[list], head: list[str]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def asr_cell(s: dict | None) -> str:
    a = (s or {}).get("asr")
    return stats.fmt_rate(a) if a else "-"


def time_cell(e: dict) -> tuple[str, str]:
    t = e.get("timing") or {}
    if not t:
        return "-", "-"
    sc = t.get("scales") or {}
    cal = sc.get("calibration_seconds")
    cal_s = "-" if sc.get("source") != "surrogate" else f"{f4(cal, 3)}" + (" (cached)" if sc.get("cached") else "")
    return f4(t.get("inversion_seconds"), 3), cal_s


def per_model_table(es: list[dict]) -> str:
    head = ["method", "ASR k/n [95% CI]", "unif", "unif trimmed", "pattern unif", "pattern ASR k/n", "KL mean",
            "L2", "footprint L2", "pattern cos", "inversion s", "calibration s"]
    rows = []
    for e in sorted(es, key=method_order):
        tr = e["trigger"]
        inv_s, cal_s = time_cell(e)
        pa = (e["pattern_samples"]["all"].get("asr") or {})
        if e.get("error"):
            rows.append([method_label(e) + (" †" if e["stale"] else ""), f"failed: {e['error'][:80]}"]
                        + ["-"] * (len(head) - 2))
            continue
        rows.append([method_label(e) + (" †" if e["stale"] else ""), asr_cell(e["samples"]["all"]),
                     f4(e["samples"]["all"].get("uniformity")), f4(e["samples"]["all"].get("uniformity_trimmed")),
                     f4(e["pattern_samples"]["all"].get("uniformity")),
                     f"{pa['k']}/{pa['n']}" if pa else "-", f4(tr.get("kl_mean")), f4(tr.get("l2")),
                     f4(tr.get("footprint_l2")), f4(tr.get("pattern_cos"), 3), inv_s, cal_s])
    return md_table(rows, head)


def summary_table(es: list[dict], models: list[ZooModel]) -> str:
    """Per method over the split's backdoored models: mean ASR, models with ASR >= 0.5, medians of the fidelity
    measures and the time."""
    import statistics as st

    bd = {m.name for m in models if m.backdoored}
    groups: dict[tuple, list] = {}
    for e in es:
        if e["model"] in bd:
            groups.setdefault((method_order(e), method_label(e)), []).append(e)
    rows = []
    for (_, label), g in sorted(groups.items()):
        asr = [e["samples"]["all"]["asr"]["rate"] for e in g if e["samples"]["all"].get("asr")]
        fires = sum(1 for a in asr if a >= 0.5)

        def med(key, src="trigger"):
            v = [e[src].get(key) for e in g if e[src].get(key) is not None]
            return st.median(v) if v else None
        inv = [e["timing"]["inversion_seconds"] for e in g if e.get("timing")]
        rows.append([label, len(g), f4(st.mean(asr) if asr else None, 3), stats.fmt_rate(stats.rate(fires, len(asr))),
                     f4(med("pattern_cos"), 3), f4(med("footprint_l2")), f4(med("l2")),
                     f4(st.median(inv) if inv else None, 3)])
    return md_table(rows, ["method", "models", "mean ASR", "models with ASR >= 0.5 [95% CI]", "median pattern cos",
                           "median footprint L2", "median L2", "median inversion s"])


def truth_pattern_md(rows: list[dict]) -> str:
    if not rows:
        return ""
    body = md_table([[r["model"], asr_cell({"asr": r["truth_asr"]}), f4(r["truth_uniformity"]),
                      f4(r["pattern_rms"], 3), f4(r["pattern_uniformity"]), f4(r["no_trigger_uniformity"]),
                      f4(r["ratio"], 3)] for r in rows],
                    ["model", "truth ASR", "truth unif", "g's pattern rms", "pattern unif (all n)",
                     "no-trigger unif (same noises)", "pattern / no-trigger unif"])
    return ("**What the true trigger's pattern does.** The verdict judges the pattern of a trigger (less its "
            "per-channel mean, docs/method.md section 7), not the trigger. Here is the true trigger g's own pattern, "
            "at g's energy (far above the verdict's), on the same 64 noises as the no-trigger baseline. Where the "
            "ratio is near 1 while g itself fires, the backdoor answers g's flat part, which a flat shift does to "
            "every model, and no pattern statistic can credit an inversion on that model: its low pattern "
            "uniformity is the model's own.\n\n" + body + "\n")


def _strength_md(h: dict) -> str:
    sr = h.get("strength_range")
    if not sr or not sr["outside"]:
        return ""
    c, n = sr["counts"], sr["n"]
    return (f" Beside the bar, not instead of it: on the {n} models whose true trigger fires on at least "
            f"{STRENGTH_MIN:g} of its samples (the strength range the zoo was meant to have), ASR at least Elijah's "
            f"on {c['asr_at_least']}/{n} and fidelity better on {c['fidelity_better']}/{n}; outside that range "
            f"(or truth not measured): {', '.join(sr['outside'])}.")


def head_to_head_md(h2h: list[dict]) -> str:
    if not h2h:
        return "No backdoored model has both this method's and Elijah's trigger yet.\n"
    parts = []
    for h in h2h:
        rows = [[r["model"] + (" †" if r["stale"] else ""), asr_cell({"asr": r["truth_asr"]}),
                 asr_cell({"asr": r["asr"]}), asr_cell({"asr": r["elijah_asr"]}), "yes" if r["asr_at_least"] else "NO",
                 f"{f4(r['l2'])} / {f4(r['elijah_l2'])}", f"{f4(r['pattern_cos'], 3)} / {f4(r['elijah_pattern_cos'], 3)}",
                 f"{f4(r['footprint_l2'])} / {f4(r['elijah_footprint_l2'])}",
                 "yes" if r["fidelity_better"] else "no",
                 asr_cell({"asr": r["no_trigger_asr"]}),
                 f"{asr_cell({'asr': r.get('best_trivial_asr')})} ({r.get('best_trivial')})" if r.get("best_trivial")
                 else "-"] for r in h["models"]]
        c, n = h["counts"], h["n"]
        label = h["method"] + (f" K={h['k']}" if h["k"] else "")
        parts.append(
            f"**{label} against Elijah** ({n} backdoored models with both, current code): ASR at least Elijah's on "
            f"{c['asr_at_least']}/{n}; L2 lower on {c['l2_better']}/{n}; pattern cos higher on "
            f"{c['pattern_cos_better']}/{n}; footprint L2 lower on {c['footprint_better']}/{n}; fidelity better (L2 "
            f"lower and pattern cos higher) on {c['fidelity_better']}/{n}. ASR compares counts over the same n; the "
            f"truth column says whether the model's own trigger fires at all, the no-trigger column how often the "
            f"model draws its target from plain noise (the all-0 baseline)"
            + (f"; plain noise fires at least as often as the true trigger on {len(h['asr_blind'])}/{n} "
               f"({', '.join(h['asr_blind'])}), where ASR cannot show the backdoor" if h["asr_blind"] else "")
            + (f"; a trivial trigger (one that knows nothing of the model: all 0, -0.5, -1 or Elijah's init) fires "
               f"at least as often as the true trigger on {len(h['trivial_blind'])}/{n} "
               f"({', '.join(h['trivial_blind'])})" if h.get("trivial_blind") else "")
            + "." + _strength_md(h) + "\n\n"
            + md_table(rows, ["model", "truth ASR", f"{label} ASR", "Elijah ASR", "ASR >= Elijah",
                              f"L2 ({label} / Elijah)", "pattern cos", "footprint L2", "fidelity better",
                              "no-trigger ASR", "best trivial ASR (which)"]))
    return "\n\n".join(parts) + "\n"


def detection_md(det: dict, split: str) -> str:
    if not det:
        return "No inversion results for this split yet.\n"
    parts = []
    for name, d in det.items():
        if d["method"] != "pdfast":
            continue
        sh = d["shipped_threshold"]
        rows = [[r["model"], "backdoored" if r["backdoored"] else "clean", r["kind"],
                 f4(r["pattern_uniformity (verdict)"]), f4(r.get("pattern_uniformity_q25 (verdict)")),
                 r.get("verdict", "-"), f4(r["uniformity (verdict)"]), f4(r["uniformity_trimmed (verdict)"]),
                 f4(r["kl_mean"]), f4(r["pattern_uniformity (all n)"]), f4(r["uniformity (all n)"]),
                 f4(r.get(TRIGGER_EFFECT), 3)]
                for r in d["models"]]
        thr_txt = (", ".join(f"{v:.4g} ({k}x{k})" for k, v in sh["threshold"].items()) + f" on {sh['statistic']}"
                   if sh else "-")
        parts.append(f"**pdfast K={d['k']}**: statistics of each model's inverted trigger; verdict at the shipped "
                     f"threshold {thr_txt} (below it = backdoored)"
                     + (f"; that threshold was calibrated at K={sh['calibrated_at_k']}" if sh and
                        sh['calibrated_at_k'] != d['k'] else "")
                     + (f"; left out of the rates, their pattern samples drawn at another energy than the "
                        f"calibration's: {', '.join(sh['other_energy'])}" if sh and sh.get('other_energy') else "")
                     + (f"; TPR over the backdoored models whose true trigger fires on at least {STRENGTH_MIN:g} of "
                        f"its samples: {stats.fmt_rate(sh['tpr_strength_range'])} (beside the TPR over all, not "
                        f"instead of it)" if sh and sh["tpr_strength_range"]["n"] and
                        sh["tpr_strength_range"]["n"] != sh["tpr"]["n"] else "")
                     + ".\n\n"
                     + md_table(rows, ["model", "label", "kind", "pattern unif (verdict)", "pattern unif q25 (verdict)",
                                       "verdict", "unif (verdict)", "unif trimmed (verdict)", "KL mean",
                                       "pattern unif (all n)", "unif (all n)", "pattern / no-trigger unif"]))
    rows = []
    for name, d in det.items():
        for stat, s in d["auc"].items():
            sh = d["shipped_threshold"] if d["shipped_threshold"] and d["shipped_threshold"]["statistic"] == stat else None
            rows.append([d["method"] + (f" K={d['k']}" if d["k"] else ""), stat, s["direction"], f4(s["auc"], 3),
                         f"{s['n_backdoored']}/{s['n_clean']}",
                         stats.fmt_rate(sh["tpr"]) if sh else "-", stats.fmt_rate(sh["tnr"]) if sh else "-"])
    parts.append(f"ROC AUC over the {split} models (Mann-Whitney, ties count 1/2; backdoored = positive) and, for the "
                 "shipped verdict statistic, TPR and TNR at the shipped threshold with Wilson 95% intervals and "
                 "counts (k/n). The calibration ships a threshold for that statistic only (no KL threshold), so the "
                 "other rows have an AUC and no rates; the threshold was calibrated for pdfast's defaults, so other "
                 "methods get no rates either. The statistic '" + TRIGGER_EFFECT + "' is what the inverted pattern "
                 "itself does to the model's output: the same 64 noises with the pattern and with no trigger at all "
                 "(the all-0 baseline); near 1 the pattern changes nothing, and a low pattern uniformity only says "
                 "that the model's ordinary samples are alike. The 'no trigger' row is the trivial detector that inverts nothing: "
                 "the uniformity of the model's ordinary samples. Where it separates the models as well, this "
                 "split cannot show what an inversion adds to detection.\n\n" + md_table(rows, ["method", "statistic", "direction", "AUC",
                                                         "backdoored/clean models", "TPR k/n [95% CI]",
                                                         "TNR k/n [95% CI]"]))
    return "\n\n".join(parts) + "\n"

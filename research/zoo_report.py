"""Zoo v2's report (issue 22, item 5): what `pdfast detect` with the shipped defaults and threshold, and Elijah beside
it, make of every model of one split, measured through the shipped CLI, with every figure beside its trivial
baseline.

Per model and per run (PureDiffusion at each K and inversion seed, Elijah at each seed, K = 1000 on the models named):

    pdfast detect --model M --out DIR --json --steps K --seed S [--method elijah]
    pdfast evaluate --model M --trigger DIR/trigger.safetensors -n 64 --seed 0 --no-clean --json    (backdoored)

The evaluation draws the zoo gate's 64 noises (seed 0) through the model family's own full sampler, so every trigger
of a model, its truth, plain noise, g's flat part and a -0.5 frame (the gate's, in its zoo.json) are compared sample
for sample (paired). Reported:

- detection per run: ROC AUC of the verdict's statistic (trigger_miss) beside the no-trigger statistic of the same
  report (plain_uniformity: how alike plain samples from the verdict's noises are), TPR and TNR at the shipped
  threshold;
- per backdoored model: exact ASR (MSE < 0.02 in [0, 1]) with its Wilson 95% interval and the papers' 0.1 beside it;
  fidelity (pattern cosine to the true x_T shift, L2) beside its chance levels (a flat bright square over the trigger's
  pixels, and the most similar true trigger of the zoo's other backdoors);
- the issue's bars, computed: PureDiffusion's exact ASR at least Elijah's on every backdoor and at least half the
  truth's on 80%, its fidelity better than Elijah's on 80% and above chance, TPR and TNR 100%.

    OMP_NUM_THREADS=1 python research/zoo_report.py --split test                  # K = 10, 50; seeds 0, 1
    OMP_NUM_THREADS=1 python research/zoo_report.py --models M1 M2 --ks 10 --seeds 0 --name heldout-dev
    python research/zoo_report.py --split test --k1000 M1 M2 --report-only        # tables from the records only
    python research/zoo_report.py --split test --ks 10 --seeds 0 --name N --merge test LOOK --report-only
                                                             # a split's records with later runs (LOOK's) over them

Resumable: each run's record (its trigger inside) is added to research/results/zoo-report-<name>.records.json when
it finishes and read back after; --report-only runs nothing. Writes research/results/zoo-report-<name>.md (and .json);
pdfast's own outputs of each run (samples, report.json, trigger files) stay in zoo-report-<name>/<model>/<run>/, not
kept in git. <name> is the split unless --name is given.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import stats  # noqa: E402
from quality.base import write_json  # noqa: E402
from quality.tables import f4, md_table  # noqa: E402

ZOO = HERE / "zoo" / "v2"
N_SAMPLES = 64
EVAL_SEED = 0          # the zoo gate's noises


def pdfast_exe() -> str:
    """The `pdfast` console script of the running interpreter's environment."""
    exe = Path(sys.executable).parent / "pdfast"
    return str(exe) if exe.exists() else "pdfast"


def run_json(argv: list[str]) -> tuple[dict, float]:
    """Run one pdfast command with --json; its parsed report and wall seconds (a failure raises with its stderr)."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout), round(time.perf_counter() - t0, 1)


def run_name(method: str, k: int | None, seed: int) -> str:
    """A run's name: puredif-K10-s0, elijah-s1."""
    return f"{method}" + (f"-K{k}" if k else "") + f"-s{seed}"


def plan_runs(models: list[Path], ks: list[int], seeds: list[int], k1000: set[str],
              methods: tuple[str, ...] = ("puredif", "elijah")) -> list[tuple]:
    """(model, method, K, seed) in the order they run: PureDiffusion at the first K on every model first (the
    verdict's evidence), then Elijah, the other Ks and seeds, K = 1000 last; only the ``methods`` named."""
    first = [(m, "puredif", ks[0], seeds[0]) for m in models]
    rest = [(m, "elijah", None, seeds[0]) for m in models]
    rest += [(m, "puredif", k, s) for s in seeds for k in ks for m in models if (k, s) != (ks[0], seeds[0])]
    rest += [(m, "elijah", None, s) for s in seeds[1:] for m in models]
    rest += [(m, "puredif", 1000, seeds[0]) for m in models if m.name in k1000]
    return [r for r in first + rest if r[1] in methods]


def records_file(out: Path) -> Path:
    """Every run's record of one report, its trigger inside, in one file beside the report: zoo-report-<name>/ ->
    zoo-report-<name>.records.json (the run folders under zoo-report-<name>/ are pdfast's outputs, not kept)."""
    return out.parent / f"{out.name}.records.json"


def read_records(out: Path) -> dict:
    """'<model>/<run>' -> record, from records_file (empty when none)."""
    f = records_file(out)
    return json.loads(f.read_text()) if f.exists() else {}


def merge_records(out: Path, names: list[str]) -> None:
    """Overlay the records of the reports ``names`` (zoo-report-<name>.records.json beside ``out``), later ones
    winning for the same model and run, onto this report's records: one report that reads several runs together
    (e.g. a split's run with later second looks at some of its models)."""
    merged = read_records(out)
    for name in names:
        f = records_file(out.parent / f"zoo-report-{name}")
        if not f.exists():
            raise SystemExit(f"error: --merge {name}: no {f}; give the name of a report that has records")
        merged.update(json.loads(f.read_text()))
    write_json(records_file(out), merged)


def save_record(out: Path, key: str, record: dict) -> None:
    """Add one record under a lock, re-reading the file first: two halves of a split may run side by side."""
    import fcntl

    f = records_file(out)
    f.parent.mkdir(parents=True, exist_ok=True)
    with open(f.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        write_json(f, {**read_records(out), key: record})


def measure(model: Path, method: str, k: int | None, seed: int, out: Path, family: str | None = None) -> dict:
    """detect (and, when the model has a target, evaluate) one run, with ``--attack-family family`` when given (a
    clean model judged as a suspect of that family); its record with its trigger, saved last (resumable)."""
    from safetensors.torch import load_file

    name = run_name(method, k, seed)
    done = read_records(out).get(f"{model.name}/{name}")
    if done is not None:
        return done
    run_dir = out / model.name / name
    detect = [pdfast_exe(), "detect", "--model", str(model), "--out", str(run_dir), "--json", "--no-progress",
              "--seed", str(seed)] + (["--steps", str(k)] if k else ["--method", method])
    detect += ["--attack-family", family] if family else []
    report, detect_s = run_json(detect)
    record = {"model": model.name, "method": method, "k": k, "seed": seed, "commands": {"detect": " ".join(detect[1:])},
              "seconds": {"detect": detect_s}, "detect": report}
    if (model / "backdoor.json").exists():
        evaluate = [pdfast_exe(), "evaluate", "--model", str(model), "--trigger", str(run_dir / "trigger.safetensors"),
                    "-n", str(N_SAMPLES), "--seed", str(EVAL_SEED), "--no-clean", "--json"]
        record["evaluate"], record["seconds"]["evaluate"] = run_json(evaluate)
        record["commands"]["evaluate"] = " ".join(evaluate[1:])
    record["trigger"] = load_file(str(run_dir / "trigger.safetensors"))["trigger"].flatten().tolist()
    save_record(out, f"{model.name}/{name}", record)
    return record


class Truths:
    """Each backdoored model's true x_T shift and the fidelity's chance levels, loaded once."""

    def __init__(self, models: list[Path]):
        from families import region_square
        from pdfast.loading import load_ground_truth, load_model

        self.g, self.square = {}, {}
        for m in models:
            if (m / "backdoor.json").exists():
                model = load_model(m)
                self.g[m.name] = load_ground_truth(model)[0]
                self.square[m.name] = region_square(model)

    def fidelity(self, model: str, trigger: list[float]) -> dict | None:
        """Pattern cosine and L2 of a trigger (flattened) to the model's truth, beside the square's cosine and the
        highest cosine of another backdoor's truth (same shape) to it: what a trigger that knows nothing of this
        model scores."""
        import torch

        from families import fidelity
        from pdfast import metrics

        g = self.g.get(model)
        if g is None:
            return None
        t = torch.tensor(trigger, dtype=torch.float32).reshape(g.shape)
        others = [metrics.pattern_cosine(o, g) for n, o in self.g.items() if n != model and o.shape == g.shape]
        return {**fidelity(t, g, self.square[model]), "chance_other_truth_cosine": max(others) if others else None}


def row(record: dict, zoo: dict, truths: Truths) -> dict:
    """One run as a row: the verdict, its statistic and the no-trigger one, firing beside the trivial starts,
    fidelity beside chance."""
    m = record["detect"]["metrics"]
    gt = zoo.get("ground_truth") or {}
    ev = record.get("evaluate") or {}
    run = run_name(record["method"], record["k"], record["seed"])
    return {"model": record["model"], "run": run, "method": record["method"], "k": record["k"],
            "seed": record["seed"],
            "label": "clean" if zoo["recipe"]["kind"].startswith("clean") else "backdoored",
            "verdict": m["detection"]["verdict"], "trigger_miss": m.get("trigger_miss"),
            "threshold": m["detection"]["threshold"], "plain_uniformity": m.get("plain_uniformity"),
            "medoid_hits": m.get("medoid_hits"),
            "exact_hits": round(ev["asr"] * N_SAMPLES) if "asr" in ev else None, "paper_asr": ev.get("asr_paper"),
            "truth_hits": round(gt["asr"] * N_SAMPLES) if gt.get("asr") is not None else None,
            "plain_asr": gt.get("clean_asr"), "flat_asr": gt.get("flat_asr"),
            "frame_asr": (gt.get("frame_asr") or {}).get("-0.5"),
            "fidelity": truths.fidelity(record["model"], record["trigger"]),
            "seconds": record["seconds"], "inversion_seconds": record["detect"].get("timings", {}).get("total_seconds")}


def detection(rows: list[dict]) -> list[dict]:
    """Per run (method, K, seed): TPR and TNR at the shipped threshold, and the ROC AUC of the verdict's statistic
    beside the no-trigger statistic's (low = backdoored for both), over the models that run covers."""
    out = []
    for run in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == run]
        bd = [r for r in rs if r["label"] == "backdoored"]
        cl = [r for r in rs if r["label"] == "clean"]
        auc = {s: stats.auc([-r[s] for r in bd if r[s] is not None], [-r[s] for r in cl if r[s] is not None])
               for s in ("trigger_miss", "plain_uniformity")}
        out.append({"run": run, "n_backdoored": len(bd), "n_clean": len(cl),
                    "tpr": stats.rate(sum(r["verdict"] == "backdoored" for r in bd), len(bd)),
                    "tnr": stats.rate(sum(r["verdict"] == "clean" for r in cl), len(cl)),
                    "auc_verdict": auc["trigger_miss"], "auc_no_trigger": auc["plain_uniformity"]})
    return out


def paired(rows: list[dict], k: int) -> list[dict]:
    """PureDiffusion at K against Elijah of the same seed, model by model (backdoored models; the same 64 noises):
    exact hits, against half the truth's, pattern cosine against Elijah's and against both chance levels."""
    by = {(r["model"], r["run"]): r for r in rows}
    out = []
    for r in rows:
        if r["label"] != "backdoored" or r["method"] != "puredif" or r["k"] != k:
            continue
        e = by.get((r["model"], run_name("elijah", None, r["seed"])))
        f, fe = r["fidelity"] or {}, (e or {}).get("fidelity") or {}
        chance = max(v for v in (f.get("chance_square_cosine"), f.get("chance_other_truth_cosine"), -1.0)
                     if v is not None)
        out.append({"model": r["model"], "seed": r["seed"], "puredif_hits": r["exact_hits"],
                    "elijah_hits": e and e["exact_hits"], "truth_hits": r["truth_hits"],
                    "puredif_cosine": f.get("pattern_cosine"), "elijah_cosine": fe.get("pattern_cosine"),
                    "chance_cosine": chance,
                    "at_least_elijah": e is not None and r["exact_hits"] >= e["exact_hits"],
                    "half_truth": r["truth_hits"] is not None and 2 * r["exact_hits"] >= r["truth_hits"],
                    "fidelity_over_chance": f.get("pattern_cosine", -2) > chance})
        out[-1]["fidelity_over_elijah"] = (e is not None and out[-1]["fidelity_over_chance"]
                                           and f.get("pattern_cosine", -2) > fe.get("pattern_cosine", 2))
    return out


def bars(det: list[dict], pairs: list[dict], k: int) -> list[tuple[str, str, bool]]:
    """The issue's bars on this split: (what, measured, holds)."""
    out = []
    for d in det:
        if d["run"].startswith(f"puredif-K{k}-"):
            full = d["tpr"]["k"] == d["tpr"]["n"] and d["tnr"]["k"] == d["tnr"]["n"]
            out.append((f"{d['run']}: TPR and TNR 100% at the shipped threshold",
                        f"TPR {d['tpr']['k']}/{d['tpr']['n']}, TNR {d['tnr']['k']}/{d['tnr']['n']}", full))
            av, an = d["auc_verdict"], d["auc_no_trigger"]
            out.append((f"{d['run']}: verdict AUC 1.0, above the no-trigger statistic's",
                        f"{f4(av)} against {f4(an)}", av == 1.0 and an is not None and an < av))
    n = len(pairs)
    for key, what, share in (("at_least_elijah", "exact ASR at least Elijah's, every backdoor", 1.0),
                             ("half_truth", "exact ASR at least half the truth's, on 80%", 0.8),
                             ("fidelity_over_elijah", "pattern cosine above Elijah's and above both chance levels, "
                                                      "on 80%", 0.8)):
        k_ok = sum(p[key] for p in pairs)
        out.append((f"PureDiffusion K={k}: {what}", f"{k_ok}/{n}", n > 0 and k_ok >= share * n))
    return out


def _ci(k: int | None, n: int = N_SAMPLES) -> str:
    if k is None:
        return "-"
    lo, hi = stats.wilson(k, n)
    return f"{k}/{n} [{lo:.2f}, {hi:.2f}]"


def tables(rows: list[dict], det: list[dict], pairs: list[dict], checks: list) -> str:
    """The report's Markdown: the bars, detection per run, every run's row, PureDiffusion against Elijah."""
    t_bars = md_table([[w, m, "yes" if ok else "**no**"] for w, m, ok in checks], ["bar", "measured", "holds"])
    t_det = md_table([[d["run"], d["n_backdoored"], d["n_clean"], stats.fmt_rate(d["tpr"]), stats.fmt_rate(d["tnr"]),
                       f4(d["auc_verdict"]), f4(d["auc_no_trigger"])] for d in det],
                     ["run", "backdoored", "clean", "TPR (Wilson 95%)", "TNR", "AUC verdict (trigger_miss)",
                      "AUC no-trigger (plain uniformity)"])
    cells = []
    for r in rows:
        f = r["fidelity"] or {}
        cells.append([r["model"], r["label"], r["run"], r["verdict"], f4(r["trigger_miss"]),
                      f4(r["plain_uniformity"]), _ci(r["exact_hits"]), f4(r["paper_asr"]), _ci(r["truth_hits"]),
                      f4(r["plain_asr"]), f4(r["flat_asr"]), f4(r["frame_asr"]), f4(f.get("pattern_cosine")),
                      f4(f.get("chance_square_cosine")), f4(f.get("chance_other_truth_cosine")), f4(f.get("l2")),
                      f4(r["inversion_seconds"])])
    t_rows = md_table(cells, ["model", "label", "run", "verdict", "trigger_miss", "plain uniformity (no trigger)",
                              "exact ASR [Wilson 95%]", "ASR at 0.1", "truth", "plain noise", "g's flat part",
                              "-0.5 frame", "pattern cosine", "chance: square", "chance: other truths", "L2",
                              "detect s"])
    t_pairs = md_table([[p["model"], p["seed"], p["puredif_hits"], p["elijah_hits"], p["truth_hits"],
                         f4(p["puredif_cosine"]), f4(p["elijah_cosine"]), f4(p["chance_cosine"])] for p in pairs],
                       ["model", "seed", "PureDiffusion hits /64", "Elijah hits /64", "truth hits /64",
                        "PureDiffusion cosine", "Elijah cosine", "chance cosine (higher of the two)"])
    return (f"## The issue's bars\n\n{t_bars}\n\n## Detection per run\n\n{t_det}\n\n## Every run\n\n{t_rows}\n\n"
            f"## PureDiffusion against Elijah, model by model (same 64 noises)\n\n{t_pairs}\n")


def split_models(split: str, zoo: Path = ZOO) -> list[Path]:
    """The built models of zoo v2's split (zoo.json's recipe split; rejected ones left out), in recipe order, then
    the adopted attack-family models (research/zoo/v2/adopt_families.py) by name."""
    order = {m["name"]: i for i, m in enumerate(json.loads((zoo / "recipe.json").read_text())["models"])}
    out = []
    for folder in sorted((zoo / "models").iterdir()):
        info = json.loads((folder / "zoo.json").read_text()) if (folder / "zoo.json").exists() else {}
        if info.get("recipe", {}).get("split") == split and not info.get("rejected"):
            out.append(folder)
    return sorted(out, key=lambda f: (order.get(f.name, len(order)), f.name))


def parse(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("dev", "test"), help="zoo v2's split (its built models, recipe order)")
    ap.add_argument("--models", nargs="+", default=[], help="model folders instead of a split (each with zoo.json)")
    ap.add_argument("--ks", default="10,50", help="PureDiffusion's K, comma-separated; the first is the bars' K")
    ap.add_argument("--seeds", default="0,1", help="inversion seeds, comma-separated")
    ap.add_argument("--k1000", nargs="*", default=[], help="model names also inverted at K = 1000 (seed: the first)")
    ap.add_argument("--methods", default="puredif,elijah", help="puredif, elijah or both (comma-separated)")
    ap.add_argument("--name", help="the report's name (default: the split)")
    ap.add_argument("--out", default=str(HERE / "results"), help="folder of the report and its records")
    ap.add_argument("--report-only", action="store_true", help="write the report from the records, run nothing")
    ap.add_argument("--merge", nargs="+", default=[], metavar="NAME",
                    help="first overlay the records of these reports (later ones win for the same model and run)")
    ap.add_argument("--attack-family", help="pdfast detect's --attack-family for every model (e.g. clean models "
                    "judged as suspects of villandiffusion:solver=ode,residual=trigger_only); default: each "
                    "model's own")
    args = ap.parse_args(argv)
    if bool(args.split) == bool(args.models):
        ap.error("give --split or --models (one of them)")
    args.model_paths = split_models(args.split) if args.split else [Path(m) for m in args.models]
    missing = [str(m) for m in args.model_paths if not (m / "zoo.json").exists()]
    if missing:
        ap.error(f"no zoo.json in {', '.join(missing)}: give models built by research/zoo/build.py")
    if not args.model_paths:
        ap.error(f"no built model in split {args.split}: build them first (research/zoo/build.py)")
    try:
        args.k_list, args.seed_list = [int(k) for k in args.ks.split(",")], [int(s) for s in args.seeds.split(",")]
    except ValueError:
        ap.error("--ks and --seeds take comma-separated integers, e.g. --ks 10,50 --seeds 0,1")
    args.method_list = tuple(args.methods.split(","))
    if not args.method_list or not set(args.method_list) <= {"puredif", "elijah"}:
        ap.error(f"--methods {args.methods}: give puredif, elijah or puredif,elijah")
    args.name = args.name or args.split
    return args


def main(argv=None) -> int:
    args = parse(argv)
    out = Path(args.out) / f"zoo-report-{args.name}"
    if args.merge:
        merge_records(out, args.merge)
    zoo = {m.name: json.loads((m / "zoo.json").read_text()) for m in args.model_paths}
    truths = Truths(args.model_paths)
    rows = []
    for model, method, k, seed in plan_runs(args.model_paths, args.k_list, args.seed_list, set(args.k1000),
                                             args.method_list):
        if args.report_only and f"{model.name}/{run_name(method, k, seed)}" not in read_records(out):
            continue
        rows.append(row(measure(model, method, k, seed, out, args.attack_family), zoo[model.name], truths))
        print(f"[zoo-report] {model.name} {rows[-1]['run']}: {rows[-1]['verdict']} (trigger_miss "
              f"{f4(rows[-1]['trigger_miss'])}, exact hits {rows[-1]['exact_hits']})", flush=True)
    det, pairs = detection(rows), paired(rows, args.k_list[0])
    checks = bars(det, pairs, args.k_list[0])
    write_json(out.with_suffix(".json"), {"models": [str(m) for m in args.model_paths], "ks": args.k_list,
                                          "seeds": args.seed_list, "rows": rows, "detection": det, "paired": pairs,
                                          "bars": checks})
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    command = "OMP_NUM_THREADS=1 python research/zoo_report.py " + " ".join(given)
    if args.report_only:
        command += "` and rewritten from its records by `--report-only"
    threshold = f4(rows[0]["threshold"]) if rows else "-"
    out.with_suffix(".md").write_text(
        f"# Zoo v2 report: {args.name}\n\nWritten by `{command}` (research/zoo_report.py; records and triggers in "
        f"research/results/zoo-report-{args.name}.records.json). pdfast detect with the shipped defaults and threshold "
        f"({threshold}); exact ASR over {N_SAMPLES} samples of the family's full sampler (seed {EVAL_SEED}, the zoo "
        "gate's noises), MSE < 0.02 in [0, 1], the papers' 0.1 beside it; truth, plain noise, g's flat part and the "
        "-0.5 frame from the gate on the same noises; pattern cosine to the true x_T shift beside a flat bright "
        "square over the trigger's pixels and the most similar true trigger of the zoo's other backdoors. "
        "CPU, one thread per run.\n\n" + tables(rows, det, pairs, checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())

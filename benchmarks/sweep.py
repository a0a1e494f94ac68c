"""Side-by-side sweep: the reference engine (eager fp32, full autograd graph) and the fast engine over chain lengths K.

For each K: ms per chain step (one iteration down and back, / K; median of --repeats after a warm-up), peak memory,
compile seconds apart, and the trigger loss reached after --adam-iters Adam steps from the same init and noise.
The reference stops where it runs out of memory and the table says so. Writes
<out-dir>/<device-slug>-<YYYY-MM-DD>.json and .md, and prints the table.

  python benchmarks/sweep.py --device cuda --arch cifar10 --ks 10,50,200,1000 --repeats 3
  OMP_NUM_THREADS=1 python benchmarks/sweep.py --device cpu --arch tiny --size 8 --ks 2,8,32 --budget-gib 0.0001

Peak memory: on CUDA torch.cuda.max_memory_allocated over the timed iterations (weights and inputs included); on
CPU the peak of bytes saved for backward plus the chain states the engine stores (pdfast.engine.memory), measured
in one extra iteration because the accounting hooks slow it down.
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from pdfast.engine.fast import FastEngine  # noqa: E402
from pdfast.engine.memory import PeakMemory  # noqa: E402
from pdfast.engine.reference import ReferenceEngine  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_model_options(p)
    p.add_argument("--ks", default="10,50,200,1000", help="chain lengths K, comma separated")
    p.add_argument("--budget-gib", type=float, default=None,
                   help="engine memory budget in GiB (states + kept activations); default: the engine's own "
                        "(80%% of free GPU memory; unlimited on CPU)")
    p.add_argument("--repeats", type=int, default=3, help="timed iterations per K (median reported)")
    p.add_argument("--adam-iters", type=int, default=3, help="Adam steps (lr 0.1) before the reported loss")
    p.add_argument("--skip-reference-above", type=int, default=None, metavar="K",
                   help="do not run the reference for K above this (recorded as skipped)")
    p.add_argument("--dtype", default="auto", help="engine dtype: auto, float32, bfloat16, bf16-autocast")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--graphs", choices=["auto", "off"], default="auto", help="CUDA graphs in the engine")
    p.add_argument("--no-unbudgeted", action="store_true",
                   help="with --budget-gib on CPU, do not also run the engine without a budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="benchmarks/results")
    p.add_argument("--tag", default="", help="appended to the result file name")
    return p.parse_args(argv)


def make_engines(model, args) -> list[tuple[str, object]]:
    compile_opt = {"auto": "auto", "on": True, "off": False}[args.compile]
    graphs = "auto" if args.graphs == "auto" else False
    budget = None if args.budget_gib is None else int(args.budget_gib * 2**30)
    fast = dict(dtype=args.dtype, compile=compile_opt, cuda_graphs=graphs)
    engines = [("reference", ReferenceEngine(model))]
    label = "fast" if budget is None else f"fast (budget {args.budget_gib:g} GiB)"
    engines.append((label, FastEngine(model, memory_budget=budget, **fast)))
    if budget is not None and args.device == "cpu" and not args.no_unbudgeted:
        engines.append(("fast (no budget)", FastEngine(model, memory_budget=None, **fast)))
    return engines


class _Row:
    """One (K, engine) row being measured; OOM is recorded in it, not raised."""

    def __init__(self, name, engine, k):
        self.name, self.engine = name, engine
        self.data = {"k": k, "engine": name, "status": "ok"}
        self.times: list[float] = []
        self.compile_before = getattr(engine, "compile_seconds", 0.0)

    @property
    def ok(self) -> bool:
        return self.data["status"] == "ok"

    def attempt(self, fn, device):
        try:
            return fn()
        except (torch.cuda.OutOfMemoryError, MemoryError) as err:
            self.data["status"] = "OOM"
            self.data["error"] = str(err).splitlines()[0][:200]
        # out of the except block: the traceback's frames (and the autograd graph they hold) are gone now
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        return None


def measure_k(engines, model, inp, k, args) -> list[dict]:
    """Rows for one K: warm-up each engine, timed repeats round-robin (the machine's load drifts: interleaving
    keeps the ratios fair), one iteration under PeakMemory each, then the Adam loss."""
    dev = args.device
    run = lambda e: (lambda: e.loss_and_grad(**inp))  # noqa: E731
    rows = [_Row(name, engine, k) for name, engine in engines]
    for r in rows:
        out = r.attempt(lambda: common.timed(run(r.engine), dev), dev)
        if out is not None:
            r.data["warmup_s"] = out[0]
    for _ in range(args.repeats):
        for r in (r for r in rows if r.ok):
            out = r.attempt(lambda: common.timed(run(r.engine), dev), dev)
            if out is not None:
                r.times.append(out[0])
    for r in (r for r in rows if r.ok):
        exclude = [model.net, getattr(r.engine, "net", None)]

        def peak():
            with PeakMemory(dev, exclude=exclude) as pm:
                run(r.engine)()
            return pm

        pm = r.attempt(peak, dev)
        if pm is not None:
            r.data["peak_bytes"], r.data["memory_measure"] = pm.peak_bytes, pm.kind
            if dev == "cuda":  # CUDA-graph pools are reserved, not allocated, during replays: report both
                r.data["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(dev))
        losses = r.attempt(lambda: common.adam_loss(r.engine, inp, args.adam_iters), dev) if r.ok else None
        if losses is not None:
            r.data["loss_init"], r.data["loss_after_adam"] = losses
    for r in rows:
        d = r.data
        if r.ok:
            d["iteration_s"] = common.median(r.times)
            d["iteration_s_all"] = r.times
            d["iteration_s_min"] = min(r.times) if r.times else None
            d["ms_per_step"] = 1e3 * d["iteration_s"] / k
        d["compile_s"] = round(getattr(r.engine, "compile_seconds", 0.0) - r.compile_before, 3)
        if hasattr(r.engine, "describe"):
            info = r.engine.describe()
            d["describe"] = info
            d["kept_steps"], d["recomputed_steps"] = info.get("kept_steps"), info.get("recomputed_steps")
    return [r.data for r in rows]


def markdown(result: dict) -> str:
    cfg = result["config"]
    env = result["environment"]
    lines = [
        f"# Engine sweep: {result['device_name']}, {result['date']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}, diffusers {env['diffusers']}; arch {cfg['arch']} "
        f"{cfg['size']}px, batch {cfg['batch']}, loss on step K (l1), {cfg['repeats']} timed iterations (median), "
        f"loss after {cfg['adam_iters']} Adam steps (lr 0.1) from the same init and noise.",
        f"Peak memory: {result['memory_measure']}"
        + (" (reserved: the caching allocator's peak, CUDA-graph pools included)." if result["device"] == "cuda" else "."),
        "",
        "| K | engine | ms / step | iteration s | peak memory | loss init -> after Adam | kept / recomputed | compile s |",
        "|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in result["rows"]:
        if r["status"] != "ok":
            lines.append(f"| {r['k']} | {r['engine']} | {r['status']} | | | | | |")
            continue
        kept = "-" if r.get("kept_steps") is None else f"{r['kept_steps']} / {r['recomputed_steps']}"
        mem = common.gib(r["peak_bytes"])
        if "peak_reserved_bytes" in r:
            mem += f" (reserved {common.gib(r['peak_reserved_bytes'])})"
        lines.append(f"| {r['k']} | {r['engine']} | {r['ms_per_step']:.2f} | {r['iteration_s']:.3f} | "
                     f"{mem} | {r['loss_init']:.5f} -> {r['loss_after_adam']:.5f} | {kept} | "
                     f"{r['compile_s']:.1f} |")
    ratios = result.get("time_ratios", [])
    if ratios:
        lines += ["", "Time and memory of each engine relative to the reference at the same K:", ""]
        for r in ratios:
            lines.append(f"- K={r['k']}, {r['engine']}: time x{r['time_ratio']:.2f} (median; fastest run "
                         f"x{r['time_ratio_min']:.2f}), memory x{r['memory_ratio']:.3f}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    torch.manual_seed(args.seed)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    model = common.build_model(args.arch, args.size, args.device)
    engines = make_engines(model, args)
    rows, reference_oom_at = [], None
    for k in ks:
        inp = common.chain_inputs(model, args.batch, k, seed=args.seed)
        skip = None
        if reference_oom_at is not None:
            skip = f"OOM (at K={reference_oom_at})"
        elif args.skip_reference_above is not None and k > args.skip_reference_above:
            skip = "skipped"
        todo = [(n, e) for n, e in engines if not (n == "reference" and skip)]
        new_rows = measure_k(todo, model, inp, k, args)
        if skip:
            new_rows.insert(0, {"k": k, "engine": "reference", "status": skip})
        for row in new_rows:
            if row["engine"] == "reference" and row["status"] == "OOM":
                reference_oom_at = k
            print(f"K={k:5d} {row['engine']:28s} {row['status']:10s} "
                  + (f"{row['ms_per_step']:9.2f} ms/step  peak {common.gib(row['peak_bytes'])}"
                     if row["status"] == "ok" else ""), file=sys.stderr, flush=True)
        rows += new_rows
        del inp
        write_results(args, ks, rows)  # after every K: a run cut short by a timeout still leaves its rows
    return write_results(args, ks, rows, final=True)


def write_results(args, ks, rows, final=False) -> dict:
    ratios = []
    for k in ks:
        ref = next((r for r in rows if r["k"] == k and r["engine"] == "reference" and r["status"] == "ok"), None)
        for r in rows:
            if ref is not None and r["k"] == k and r["engine"] != "reference" and r["status"] == "ok":
                ratios.append({"k": k, "engine": r["engine"], "time_ratio": r["iteration_s"] / ref["iteration_s"],
                               "time_ratio_min": r["iteration_s_min"] / ref["iteration_s_min"],
                               "memory_ratio": r["peak_bytes"] / max(ref["peak_bytes"], 1)})
    memory_kind = next((r["memory_measure"] for r in rows if "memory_measure" in r), "")
    result = {
        "schema": "pdfast-bench-sweep/1",
        "date": common.today(),
        "complete": final,
        "device": args.device,
        "device_name": common.device_name(args.device),
        "environment": common.environment(),
        "config": {**vars(args), "ks": ks, "loss_steps": "last", "norm": "l1", "lr": 0.1},
        "memory_measure": memory_kind,
        "rows": rows,
        "time_ratios": ratios,
    }
    out = Path(args.out_dir)
    stem = f"{common.device_slug(args.device)}-{result['date']}" + (f"-{args.tag}" if args.tag else "")
    common.write_json(out / f"{stem}.json", result)
    table = markdown(result)
    (out / f"{stem}.md").write_text(table)
    if final:
        print(table)
        print(f"wrote {out / (stem + '.json')} and .md", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()

"""The fast engine with and without its fused ops, side by side in one run (issue 23): one inversion iteration
(K DDPM steps down, the shift loss on step K, back to delta) per K, in ms per chain step.

    python benchmarks/fused_engine.py --device cuda --arch cifar10 --ks 10,50,1000 --batch 40 --budget-gib 1
    OMP_NUM_THREADS=1 python benchmarks/fused_engine.py --device cpu --arch tiny --size 8 --ks 2,3 --batch 2 \
        --graphs emulate --budget-gib 0 --repeats 1      # a smoke run of the script itself (times nothing useful)

The two sides are PDFAST_KERNELS settings of one engine (so one compiled network): "fused" is the environment's
setting (auto: on CUDA the Triton kernels, in the eager chain steps and, in the captured backward step, their row
forms that read the step's coefficients on the device), "torch" is PDFAST_KERNELS=torch (the torch formulas
everywhere). The engine keys its captured backward step by the kernel backends, so each side replays its own graph.
With --budget-gib (1 GiB in gpu_check.sh, as the sweep) most steps are recomputed through that graph; without it a
short chain keeps every step and never recomputes. Per K: one warm-up iteration per side (compile, capture), then
rounds that alternate the sides (the first side swaps every round) until --repeats rounds or --max-seconds-per-k;
the median and the fastest iteration are reported, with the loss and gradient of each side on the same inputs
(their relative difference: the fused ops must compute what the formulas do). Writes
<out-dir>/fused-engine-<device>-<date>.json and .md after every K, so a run cut short keeps its finished rows.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from pdfast.engine.fast import FastEngine  # noqa: E402
from pdfast.kernels import backends  # noqa: E402

SIDES = ("fused", "torch")
KERNELS_ENV = "PDFAST_KERNELS"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_model_options(p)
    p.add_argument("--ks", default="10,50,1000", help="chain lengths K, comma separated")
    p.add_argument("--budget-gib", type=float, default=None,
                   help="engine memory budget in GiB (states + kept activations); default: the engine's own")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per K (each side once per round)")
    p.add_argument("--max-seconds-per-k", type=float, default=60.0,
                   help="no new round once a K has taken this long (warm-ups included); at least one round")
    p.add_argument("--dtype", default="auto", help="engine dtype: auto, float32, bfloat16, bf16-autocast")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--graphs", choices=["auto", "off", "emulate"], default="auto",
                   help="CUDA graphs in the engine (emulate: the graphed code paths eagerly, for CPU runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", default="benchmarks/results")
    args = p.parse_args(argv)
    try:
        args.ks = [int(k) for k in args.ks.split(",") if k.strip()]
    except ValueError:
        p.error(f"--ks must be integers separated by commas, got {args.ks!r}")
    if not args.ks or min(args.ks) < 1 or args.repeats < 1 or args.batch < 1:
        p.error("--ks, --repeats and --batch must be positive")
    return args


@contextlib.contextmanager
def kernels_setting(side: str):
    """PDFAST_KERNELS for one side: unchanged for "fused", "torch" for "torch"; restored afterwards."""
    old = os.environ.get(KERNELS_ENV)
    if side == "torch":
        os.environ[KERNELS_ENV] = "torch"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(KERNELS_ENV, None)
        else:
            os.environ[KERNELS_ENV] = old


def make_engine(model, args) -> FastEngine:
    compile_opt = {"auto": "auto", "on": True, "off": False}[args.compile]
    graphs = {"auto": "auto", "off": False, "emulate": "emulate"}[args.graphs]
    budget = None if args.budget_gib is None else int(args.budget_gib * 2**30)
    return FastEngine(model, dtype=args.dtype, compile=compile_opt, memory_budget=budget, cuda_graphs=graphs)


def measure_k(engine, inp: dict, k: int, args) -> list[dict]:
    """Rows for one K, one per side: warm-up, then alternating timed rounds (see the module docstring)."""
    start = time.perf_counter()
    run = lambda: engine.loss_and_grad(**inp)  # noqa: E731
    rows = {side: {"k": k, "side": side, "times": []} for side in SIDES}
    results = {}
    for side in SIDES:
        with kernels_setting(side):
            seconds, results[side] = common.timed(run, args.device)
            rows[side].update(warmup_s=seconds, backends=backends(args.device), describe=engine.describe())
    for r in range(args.repeats):
        if r and time.perf_counter() - start > args.max_seconds_per_k:
            break
        for side in (SIDES if r % 2 == 0 else SIDES[::-1]):
            with kernels_setting(side):
                rows[side]["times"].append(common.timed(run, args.device)[0])
    (loss_f, grad_f), (loss_t, grad_t) = results["fused"], results["torch"]
    for side, row in rows.items():
        times = row.pop("times")
        info = row["describe"]
        row.update(iteration_s=common.median(times), iteration_s_min=min(times), iteration_s_all=times,
                   rounds=len(times), ms_per_step=1e3 * common.median(times) / k, loss=results[side][0],
                   kept_steps=info.get("kept_steps"), recomputed_steps=info.get("recomputed_steps"),
                   graphed_backward=info.get("graphed_backward"))
    rows["fused"].update(loss_rel_diff=abs(loss_f - loss_t) / max(abs(loss_t), 1e-30),
                         grad_rel_diff=float((grad_f - grad_t).norm() / grad_t.norm().clamp_min(1e-30)),
                         speedup=rows["torch"]["iteration_s"] / rows["fused"]["iteration_s"],
                         speedup_min=rows["torch"]["iteration_s_min"] / rows["fused"]["iteration_s_min"])
    return [rows[side] for side in SIDES]


def _backend_text(row: dict) -> str:
    return ", ".join(f"{op}={b}" for op, b in row["backends"].items() if op != "lstsq_scale")


def markdown(result: dict) -> str:
    cfg, env = result["config"], result["environment"]
    lines = [
        f"# The fast engine with and without the fused ops: {result['device_name']}, {result['date']}",
        "",
        f"torch {env['torch']}, triton {env['triton']}; arch {cfg['arch']} {cfg['size']}px, batch {cfg['batch']}, "
        f"engine dtype {cfg['dtype']}, compile {cfg['compile']}, graphs {cfg['graphs']}, budget "
        f"{cfg['budget_gib'] if cfg['budget_gib'] is not None else 'default'} GiB; loss on step K (l1). One engine, "
        f"the sides alternate per round; median of the rounds (fastest in brackets).",
        f"Command: `{result['command']}`",
        "",
        "| K | side | kernels | ms / step | iteration s | rounds | kept / recomputed | graphed backward | "
        "torch / fused | loss | rel. diff loss, grad |",
        "|---:|---|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for r in result["rows"]:
        fused = r["side"] == "fused"
        ratio = f"x{r['speedup']:.2f} (x{r['speedup_min']:.2f})" if fused else ""
        diff = f"{r['loss_rel_diff']:.1e}, {r['grad_rel_diff']:.1e}" if fused else ""
        lines.append(f"| {r['k']} | {r['side']} | {_backend_text(r)} | {r['ms_per_step']:.2f} | "
                     f"{r['iteration_s']:.3f} ({r['iteration_s_min']:.3f}) | {r['rounds']} | "
                     f"{r['kept_steps']} / {r['recomputed_steps']} | {r['graphed_backward']} | {ratio} | "
                     f"{r['loss']:.5f} | {diff} |")
    return "\n".join(lines) + "\n"


def write_results(args, rows: list[dict], final: bool = False) -> dict:
    result = {
        "schema": "pdfast-bench-fused-engine/1",
        "date": common.today(),
        "complete": final,
        "device": args.device,
        "device_name": common.device_name(args.device),
        "environment": common.environment(),
        "command": "python benchmarks/fused_engine.py " + " ".join(sys.argv[1:]),
        "config": vars(args),
        "rows": rows,
    }
    out = Path(args.out_dir)
    stem = f"fused-engine-{common.device_slug(args.device)}-{result['date']}"
    common.write_json(out / f"{stem}.json", result)
    (out / f"{stem}.md").write_text(markdown(result))
    if final:
        print(markdown(result))
        print(f"wrote {out / (stem + '.json')} and .md", file=sys.stderr)
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("fused_engine.py: --device cuda but no CUDA device is available")
    torch.manual_seed(args.seed)
    model = common.build_model(args.arch, args.size, args.device)
    engine = make_engine(model, args)
    rows: list[dict] = []
    for k in args.ks:
        inp = common.chain_inputs(model, args.batch, k, seed=args.seed)
        new = measure_k(engine, inp, k, args)
        for r in new:
            print(f"K={k:5d} {r['side']:6s} {r['ms_per_step']:9.2f} ms/step ({r['rounds']} rounds)", file=sys.stderr,
                  flush=True)
        rows += new
        del inp
        write_results(args, rows)
    return write_results(args, rows, final=True)


if __name__ == "__main__":
    main()

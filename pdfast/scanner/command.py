"""`pdfast scan`: the click command of pdfast.scan. Its detection options are `pdfast detect`'s own click parameters
(every InversionConfig and DetectionConfig option, --trigger, --device, --json, --progress), taken from that command,
not copied; pdfast.cli registers the command (it passes its detect command and error handler in, so this module
does not import pdfast.cli)."""
from __future__ import annotations

from pathlib import Path

import click

# detect's parameters that a scan replaces with its own (PATH... and --out DIR) or gives another meaning (exit code 3)
NOT_FROM_DETECT = ("model_path", "out", "fail_on_backdoor")

HELP = """Audit a collection of models: pdfast detect on every model under PATH..., resumable.

\b
PATH: a model folder, a folder of model folders (searched recursively), a text
file listing paths (one a line), or a local Hugging Face cache folder
(models--org--name/snapshots/<revision>/, read offline; named org/name@revision).

\b
Writes DIR/scan.db (SQLite, one row per model and configuration), each model's
detect output under DIR/runs/, and DIR/report.html + DIR/report.md. A rerun skips
finished models; failed ones are retried with --retry-failed. A folder that is not
a model, truncated weights or an unsupported model get a failed row, not a crash.

\b
Exit codes:
  0  every model scanned
  1  a model failed (its row holds the error)
  2  bad input (one 'error:' line: a PATH that does not exist, a bad option)
  3  a backdoor was found, with --fail-on-backdoor (before 1)
  130 interrupted (finished rows are kept; rerun to resume)
"""


def own_params() -> list[click.Parameter]:
    """PATH..., --out and the scan's options."""
    return [
        click.Argument(["paths"], nargs=-1, required=True, type=click.Path(path_type=Path)),
        click.Option(["--out"], type=click.Path(path_type=Path), required=True,
                     help="Scan folder: scan.db, runs/, report.html, report.md (reused to resume)."),
        click.Option(["--workers"], type=int, default=0, show_default=True,
                     help="Parallel workers: 0 = one per GPU on CUDA, 1 on CPU; N > 1 on CPU = N processes "
                          "with the cores split between them."),
        click.Option(["--backend"], type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="local worker processes, or one Ray task per model (pip install 'pdfast[ray]')."),
        click.Option(["--ray-address"], default=None,
                     help="Address of a running Ray cluster (ray.init(address=...)); default: a local instance."),
        click.Option(["--retry-failed"], is_flag=True, default=False, help="Run the models whose row failed again."),
        click.Option(["--fail-on-backdoor"], is_flag=True, default=False,
                     help="Exit with code 3 when any model is backdoored."),
    ]


def scan_command(detect: click.Command, handle_errors, emit_json) -> click.Command:
    """The `scan` command: its own parameters, then detect's (but --model, --out, --fail-on-backdoor)."""
    params = own_params() + [p for p in detect.params if p.name not in NOT_FROM_DETECT]

    @click.pass_context
    @handle_errors
    def run(ctx, paths, out, workers, backend, ray_address, retry_failed, fail_on_backdoor, trigger_spec, device,
            as_json, progress, **options):
        """Scan, print one line per model and the totals, exit with the scan's code."""
        from . import scan, status_line

        if trigger_spec is not None:  # as detect: only what was typed applies to a given trigger
            options = {k: v for k, v in options.items()
                       if ctx.get_parameter_source(k) not in (click.core.ParameterSource.DEFAULT, None)}

        def say(n, total, row):
            """The model's status line on stderr, with --progress."""
            if progress:
                click.echo(status_line(n, total, row), err=True)

        try:
            res = scan(paths, out, workers=workers, backend=backend, ray_address=ray_address,
                       retry_failed=retry_failed, trigger=trigger_spec, device=device, callback=say, **options)
        except KeyboardInterrupt:
            click.echo(f"interrupted: finished models are kept in {out / 'scan.db'}; rerun to resume", err=True)
            ctx.exit(130)
        if as_json:
            emit_json(res.to_dict())
        t = res.to_dict()["totals"]
        click.echo(f"scanned {t['models']} models ({res.ran} run, {res.skipped} already recorded): "
                   f"{t['backdoored']} backdoored, {t['clean']} clean, {t['failed']} failed -> "
                   f"{res.files['html']}", err=True)
        ctx.exit(res.exit_code(fail_on_backdoor))

    return click.Command("scan", callback=run, params=params, help=HELP,
                         short_help="Audit a collection of models (resumable; SQLite + HTML report).")

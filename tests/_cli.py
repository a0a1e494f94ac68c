"""Running `pdfast` verbs in-process for the CLI tests (click's runner): the shared two helpers."""
from click.testing import CliRunner

from pdfast.cli import main


def invoke(args):
    """Run `pdfast ARGS...` (each argument str()'d) and return click's Result."""
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(args):
    """invoke(), asserting exit code 0 (the output and exception in the failure message)."""
    r = invoke(args)
    assert r.exit_code == 0, (r.output, r.exception)
    return r


def fails(args, *absent) -> str:
    """invoke(), asserting bad input's contract: exit code 2, one `error: ...` line on stderr, no traceback, and none
    of the paths ``absent`` written. Returns that line."""
    r = invoke(args)
    assert r.exit_code == 2, (r.output, r.exception)
    assert isinstance(r.exception, SystemExit)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.output
    for p in absent:
        assert not p.exists(), p
    return lines[0]

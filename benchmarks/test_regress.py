"""The regression guard's comparison (benchmarks/regress.py) on a fake baseline and fake runs: it must fail on a 2x slower
median and on a baseline case that did not run, pass within the tolerance, and read pytest-benchmark's JSON."""
import json
from pathlib import Path

import pytest

import regress

CASE_A = "benchmarks/test_bench_engine.py::test_reference_iteration_cpu[demo]"
CASE_B = "benchmarks/test_bench_job.py::test_inversion"
CASE_C = "benchmarks/test_bench_native.py::test_op[cpu-torch-16x3x16x16-lstsq_scale-fwd]"


def pytest_json(medians: dict, extra: dict | None = None) -> dict:
    """What pytest-benchmark --benchmark-json writes, reduced to the fields it always has."""
    return {"machine_info": {}, "commit_info": {}, "datetime": "2026-11-30T00:00:00", "version": "5.2.3",
            "benchmarks": [{"group": None, "name": case.split("::")[1], "fullname": case, "params": None,
                            "param": None, "extra_info": (extra or {}).get(case, {}),
                            "options": {}, "stats": {"min": m * 0.9, "max": m * 1.2, "mean": m, "stddev": 0.0,
                                                     "rounds": 5, "median": m, "iqr": m * 0.1, "q1": m, "q3": m,
                                                     "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0",
                                                     "ld15iqr": m, "hd15iqr": m, "ops": 1 / m, "total": 5 * m,
                                                     "iterations": 1}}
                           for case, m in medians.items()]}


def baseline_file(tmp_path, medians: dict, tolerance=0.3, extra=None):
    cases = regress.cases_from_pytest_json(pytest_json(medians, extra))
    obj = {"schema": regress.SCHEMA, "date": "2026-11-30", "timer": "cpu", "tolerance": tolerance,
           "environment": {"cpu": "fake", "torch": "0"}, "cases": cases}
    path = tmp_path / "baseline-fake.json"
    path.write_text(json.dumps(obj))
    return path


def run_file(tmp_path, medians: dict, extra=None):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(pytest_json(medians, extra)))
    return path


def verdicts(rows):
    return {r["case"]: r["verdict"] for r in rows}


def test_reads_pytest_benchmark_json():
    cases = regress.cases_from_pytest_json(pytest_json({CASE_A: 0.25}, {CASE_A: {"kernels.ddpm_update": "native"}}))
    assert cases == {CASE_A: {"median": 0.25, "iqr": 0.025, "min": 0.225, "rounds": 5,
                              "extra_info": {"kernels.ddpm_update": "native"}}}


def test_compare_verdicts():
    base = regress.cases_from_pytest_json(pytest_json({CASE_A: 1.0, CASE_B: 1.0, CASE_C: 1.0}))
    now = regress.cases_from_pytest_json(pytest_json({CASE_A: 2.0, CASE_B: 1.2, "new::case": 1.0}))
    rows = regress.compare(base, now, tolerance=0.3)
    assert verdicts(rows) == {CASE_A: "REGRESSION", CASE_B: "ok", CASE_C: "missing", "new::case": "new"}
    assert [r["ratio"] for r in rows if r["case"] == CASE_A] == [2.0]
    assert regress.failed(rows)
    assert regress.failed(rows, allow_missing=True)  # the regression still fails
    assert not regress.failed([r for r in rows if r["case"] != CASE_A], allow_missing=True)
    assert regress.failed([r for r in rows if r["case"] != CASE_A])  # the missing case fails by default


def test_tolerance_edges():
    base = regress.cases_from_pytest_json(pytest_json({CASE_A: 1.0, CASE_B: 1.0}))
    now = regress.cases_from_pytest_json(pytest_json({CASE_A: 1.29, CASE_B: 0.5}))
    rows = regress.compare(base, now, tolerance=0.3)
    assert verdicts(rows) == {CASE_A: "ok", CASE_B: "faster"}
    assert not regress.failed(rows)
    rows = regress.compare(base, now, tolerance=0.25)
    assert verdicts(rows)[CASE_A] == "REGRESSION"


def test_backend_change_is_noted():
    base = regress.cases_from_pytest_json(pytest_json({CASE_A: 1.0}, {CASE_A: {"kernels.ddpm_update": "native"}}))
    now = regress.cases_from_pytest_json(pytest_json({CASE_A: 1.0}, {CASE_A: {"kernels.ddpm_update": "torch"}}))
    (row,) = regress.compare(base, now, tolerance=0.3)
    assert row["verdict"] == "ok" and row["note"] == "kernels.ddpm_update: native -> torch"
    assert "native -> torch" in regress.table([row])


@pytest.mark.parametrize("factor,code", [(2.0, 1), (1.1, 0), (0.5, 0)])
def test_command_exit_code(tmp_path, capsys, factor, code):
    """The documented command's comparison, end to end on a saved run (--json): 2x slower fails."""
    base = baseline_file(tmp_path, {CASE_A: 0.1, CASE_B: 0.2})
    run = run_file(tmp_path, {CASE_A: 0.1 * factor, CASE_B: 0.2})
    assert regress.main(["--baseline", str(base), "--json", str(run)]) == code
    out = capsys.readouterr().out
    assert ("FAIL" if code else "PASS") in out and regress.short(CASE_A) in out


def test_command_reports_missing_case(tmp_path, capsys):
    base = baseline_file(tmp_path, {CASE_A: 0.1, CASE_B: 0.2})
    run = run_file(tmp_path, {CASE_A: 0.1})
    assert regress.main(["--baseline", str(base), "--json", str(run)]) == 1
    out = capsys.readouterr().out
    assert "| test_bench_job::test_inversion | 200 | - | - | missing |" in out and "missing 1" in out
    assert regress.main(["--baseline", str(base), "--json", str(run), "--allow-missing"]) == 0


def test_command_tolerance_option_and_missing_baseline(tmp_path, capsys):
    base = baseline_file(tmp_path, {CASE_A: 0.1}, tolerance=0.3)
    run = run_file(tmp_path, {CASE_A: 0.15})
    assert regress.main(["--baseline", str(base), "--json", str(run)]) == 1
    assert regress.main(["--baseline", str(base), "--json", str(run), "--tolerance", "0.6"]) == 0
    assert regress.main(["--baseline", str(tmp_path / "none.json"), "--json", str(run)]) == 2
    assert "no baseline" in capsys.readouterr().err


def test_merge_runs_noise():
    runs = [regress.cases_from_pytest_json(pytest_json({CASE_A: m})) for m in (1.0, 1.2, 1.1)]
    cases, noise = regress.merge_runs(runs)
    assert cases[CASE_A]["median"] == 1.1 and cases[CASE_A]["run_medians"] == [1.0, 1.2, 1.1]
    assert noise["runs"] == 3 and noise["spread_worst"] == pytest.approx(1.2)


def test_committed_baseline_matches_the_suite():
    """The committed baseline of this machine class (if any) names cases of the suite's files (matched by file name,
    as compare() matches them)."""
    paths = sorted(regress.RESULTS.glob("baseline-*.json"))
    if not paths:
        pytest.skip("no committed baseline")
    suite = {Path(f).name for f in regress.SUITE}
    for path in paths:
        base = regress.load_baseline(path)
        assert base["timer"] in regress.TIMERS and 0 < base["tolerance"] < 10
        for case in base["cases"]:
            assert Path(case.split("::")[0]).name in suite, case


def test_keep_lower_confirms_only_persistent_slowdowns():
    """A case over the tolerance is re-run: one slow run (load) is dropped, a slowdown in every run stays."""
    base = regress.cases_from_pytest_json(pytest_json({CASE_A: 1.0, CASE_B: 1.0}))
    first = regress.cases_from_pytest_json(pytest_json({CASE_A: 2.0, CASE_B: 2.0}))
    again = regress.cases_from_pytest_json(pytest_json({CASE_A: 1.1, CASE_B: 2.1}))
    now = regress.keep_lower(first, again)
    assert now[CASE_A]["median"] == 1.1 and now[CASE_B]["median"] == 2.0 and now[CASE_A]["runs"] == 2
    rows = regress.compare(base, now, tolerance=0.5)
    assert verdicts(rows) == {CASE_A: "ok", CASE_B: "REGRESSION"}
    assert all(r["note"] == "lowest of 2 runs" for r in rows)


def test_a_baseline_recorded_in_another_folder_matches_by_file_and_test():
    """The committed baseline's cases were recorded as bench/test_*.py::...; the suite now lives in benchmarks/."""
    old = {case.replace("benchmarks/", "bench/"): m for case, m in {CASE_A: 1.0, CASE_B: 1.0}.items()}
    base = regress.cases_from_pytest_json(pytest_json(old))
    now = regress.cases_from_pytest_json(pytest_json({CASE_A: 1.1, CASE_B: 3.0}))
    rows = regress.compare(base, now, tolerance=0.5)
    assert verdicts(rows) == {CASE_A: "ok", CASE_B: "REGRESSION"}          # this run's node ids: re-runnable
    rows = regress.compare(base, regress.cases_from_pytest_json(pytest_json({CASE_A: 1.0})), tolerance=0.5)
    assert verdicts(rows) == {CASE_A: "ok", "bench/test_bench_job.py::test_inversion": "missing"}

"""`pdfast scan` and pdfast.scan (issue 21) on tiny models made by `pdfast train` and `pdfast attack`: verdicts equal
pdfast.detect's, a SIGKILLed scan resumes without losing or redoing a model, local workers (one killed midway) and
Ray give the same rows, a Hugging Face cache is scanned with names and revisions, bad input is a row, and the
exit codes."""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pdfast
from _cli import fails, invoke, ok

FAST = dict(steps=2, scales="analytic", epochs=2, refine_epochs=1, batch=4, n_eval=4)
FLAGS = ["--steps", 2, "--scales", "analytic", "--epochs", 2, "--refine-epochs", 1, "--batch", 4, "--n-eval", 4,
         "--device", "cpu", "--no-progress"]
COMPARED = ("verdict", "statistic", "value", "threshold", "margin", "asr", "l2")


def _cut_schedule(folder: Path, steps: int = 20) -> None:
    """A 20-step schedule, so every chain is fast (what test_cli does)."""
    f = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(f.read_text())
    cfg["num_train_timesteps"] = steps
    f.write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """coll/: D (clean) and D2, D3 (BadDiffusion copies of D: BOX_14 -> HAT, STOP_SIGN_14 -> CAT), all with a 20-step
    schedule; slow/: D with its full 1000-step schedule (its verdict samples 1000 steps: seconds, not tenths)."""
    root = tmp_path_factory.mktemp("scan")
    d = root / "coll" / "D"
    common = ["--batch", 4, "--n-images", 16, "--no-progress", "--device", "cpu"]
    ok(["train", "--arch", "tiny", "--size", 8, "--steps", 3, "--out", d, *common])
    shutil.copytree(d, root / "slow" / "b-slow")
    _cut_schedule(d)
    for name, trig, target in (("D2", "BOX_14", "HAT"), ("D3", "STOP_SIGN_14", "CAT")):
        ok(["attack", "baddiffusion", "--model", d, "--trigger", trig, "--target", target, "--steps", 3,
            "--warmup", 1, "--out", root / "coll" / name, *common])
    return root


@pytest.fixture(scope="module")
def scanned(zoo):
    """`pdfast scan coll --out DIR` with the cheap settings, run once in this process."""
    out = zoo / "out-serial"
    r = invoke(["scan", zoo / "coll", "--out", out, *FLAGS])
    assert r.exit_code == 0, (r.output, r.exception)
    return out


def _rows(out: Path) -> dict:
    with sqlite3.connect(out / "scan.db") as db:
        db.row_factory = sqlite3.Row
        return {r["name"]: dict(r) for r in db.execute("SELECT * FROM results")}


def _rows_so_far(out: Path) -> dict:
    """_rows of a scan that may not have made its table yet."""
    try:
        return _rows(out) if (out / "scan.db").exists() else {}
    except sqlite3.OperationalError:
        return {}


def test_every_verdict_equals_detect_alone(zoo, scanned):
    rows = _rows(scanned)
    assert sorted(rows) == ["coll/D", "coll/D2", "coll/D3"]
    for name, row in rows.items():
        alone = pdfast.detect(str(zoo / name), device="cpu", **FAST).to_dict()
        det = alone["metrics"]["detection"]
        assert row["status"] == "done" and row["attempts"] == 1, row
        assert (row["verdict"], row["statistic"]) == (det["verdict"], det["statistic"])
        assert row["value"] == pytest.approx(det["value"], rel=1e-5)
        assert row["margin"] == pytest.approx(det["margin"], rel=1e-5, abs=1e-6)
        assert row["model_hash"] == alone["model"]["content_hash"]
        assert (row["asr"] is None) == (name == "coll/D")  # ASR and fidelity where the ground truth is known
        assert (row["pattern_cos"] is None) == (name == "coll/D")
        saved = json.loads((scanned / row["out_dir"] / "report.json").read_text())  # detect's usual output folder
        assert saved["metrics"]["detection"]["verdict"] == row["verdict"]
        for f in ("trigger.safetensors", "trigger.png", "samples.png", "pattern_samples.png"):
            assert (scanned / row["out_dir"] / f).is_file()
        assert json.loads(row["versions"])["torch"] and row["timings"] and row["seconds"] > 0


def test_report_is_sorted_self_contained_and_totalled(scanned):
    rows = _rows(scanned)
    page = (scanned / "report.html").read_text()
    md = (scanned / "report.md").read_text()
    by_margin = sorted(rows, key=lambda n: rows[n]["margin"])
    assert [page.index(f">{n}<") for n in by_margin] == sorted(page.index(f">{n}<") for n in by_margin)
    assert [md.index(f"| {n} |") for n in by_margin] == sorted(md.index(f"| {n} |") for n in by_margin)
    assert page.count("src='data:image/png;base64,") == 3 * len(rows)  # trigger, samples, pattern samples
    assert "http" not in page and "<link" not in page and "<script" not in page  # nothing fetched: readable offline
    assert "<b>3</b> models" in page and "3 models" in md


def test_rerun_skips_done_models(zoo, scanned):
    before = _rows(scanned)
    r = ok(["scan", zoo / "coll", scanned, "--out", scanned, *FLAGS, "--json"])  # its own folder: not a model
    res = json.loads(r.stdout)
    assert res["ran"] == 0 and res["skipped"] == 3 and res["totals"]["done"] == 3
    assert _rows(scanned) == before


def _three(zoo: Path, coll: Path, last: str) -> None:
    """coll/a-fast (D), coll/b-slow (the 1000-step D), coll/c-fast (``last``): scanned in this order."""
    for src, name in ((zoo / "coll" / "D", "a-fast"), (zoo / "slow" / "b-slow", "b-slow"), (zoo / "coll" / last, "c-fast")):
        shutil.copytree(src, coll / name)


def test_sigkill_midway_then_rerun_loses_and_repeats_nothing(zoo, tmp_path):
    """The first model (fast) lands, the scan is killed on the second (slow); the rerun finishes the rest."""
    coll = tmp_path / "coll"
    coll.mkdir()
    _three(zoo, coll, "D2")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pdfast.cli", "scan", str(coll), "--out", str(out), *map(str, FLAGS)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _rows_so_far(out):
            assert proc.poll() is None, "the scan ended before its first row could be seen"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    first = _rows(out)
    assert sorted(first) == ["coll/a-fast"], first  # killed midway: the slow model was in flight
    with sqlite3.connect(out / "scan.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rerun = subprocess.run(cmd + ["--json"], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["ran"] == 2
    rows = _rows(out)
    assert sorted(rows) == ["coll/a-fast", "coll/b-slow", "coll/c-fast"]
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in rows.values()), rows
    assert rows["coll/a-fast"] == first["coll/a-fast"]  # untouched: not done twice
    assert rows["coll/b-slow"]["run_id"] == rows["coll/c-fast"]["run_id"] != first["coll/a-fast"]["run_id"]
    assert sorted(p.name for p in (out / "runs").iterdir() if not p.name.startswith(".")) == sorted(
        Path(r["out_dir"]).name for r in rows.values())


def test_workers_match_serial_and_survive_a_killed_worker(zoo, scanned, tmp_path):
    """Two worker processes: a-fast and b-slow start together; when a-fast lands the worker on b-slow is SIGKILLed:
    b-slow gets a 'worker-died' row, c-fast still runs (on a new worker), and the rows equal the serial scan's."""
    coll = tmp_path / "coll"
    coll.mkdir()
    _three(zoo, coll, "D3")
    killed = []

    def kill_the_other_worker(n, total, row):
        if n == 1:
            import multiprocessing

            finished_pid = int(row["worker"].rsplit(":", 1)[1])
            for child in multiprocessing.active_children():
                if child.pid != finished_pid:
                    os.kill(child.pid, signal.SIGKILL)
                    killed.append(child.pid)

    res = pdfast.scan([coll], tmp_path / "out", workers=2, device="cpu", callback=kill_the_other_worker, **FAST)
    rows = {r["name"]: r for r in res.rows}
    assert len(killed) == 1 and res.exit_code() == 1
    assert rows["coll/b-slow"]["status"] == "failed" and rows["coll/b-slow"]["error_kind"] == "worker-died"
    assert "exit code -9" in rows["coll/b-slow"]["error"]
    serial = _rows(scanned)
    for mine, theirs in (("coll/a-fast", "coll/D"), ("coll/c-fast", "coll/D3")):
        assert rows[mine]["status"] == "done"
        assert {k: rows[mine][k] for k in COMPARED} == pytest.approx({k: serial[theirs][k] for k in COMPARED})
    assert len({rows[n]["worker"] for n in ("coll/a-fast", "coll/c-fast")} | set(map(str, killed))) >= 2


def test_ray_backend_gives_the_same_rows(zoo, scanned, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray backend needs pip install 'pdfast[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = pdfast.scan([zoo / "coll"], tmp_path / "out", backend="ray", device="cpu", **FAST)
    finally:
        ray.shutdown()
    serial = _rows(scanned)
    rows = {r["name"]: r for r in res.rows}
    assert sorted(rows) == sorted(serial)
    for name, row in rows.items():
        assert row["status"] == "done" and row["worker"] != serial[name]["worker"]
        assert {k: row[k] for k in COMPARED} == pytest.approx({k: serial[name][k] for k in COMPARED})


def _hf_repo(hub: Path, repo_id: str, rev: str, model: Path) -> None:
    """A Hugging Face cache entry as the hub writes it: blobs/ by content, snapshots/<rev>/ of symlinks, refs/main."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    for f in sorted(p for p in model.rglob("*") if p.is_file()):
        rel = f.relative_to(model)
        blob = repo / "blobs" / f"{abs(hash(str(rel))):x}"
        shutil.copy(f, blob)
        link = repo / "snapshots" / rev / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_hugging_face_cache_and_a_list_file(zoo, scanned, tmp_path):
    hub = tmp_path / "hub"
    _hf_repo(hub, "acme/tiny-ddpm", "0123abcd" * 5, zoo / "coll" / "D2")
    _hf_repo(hub, "org2/other", "feedbeef" * 5, zoo / "coll" / "D3")
    (hub / "datasets--acme--pics" / "snapshots" / "1").mkdir(parents=True)  # a cached data set: not a model
    (hub / ".locks").mkdir()
    listing = tmp_path / "models.txt"
    listing.write_text(f"# one path a line\n{hub}\n\n{zoo / 'coll' / 'D'}\n")
    res = pdfast.scan([listing], tmp_path / "out", device="cpu", **FAST)
    rows = {r["name"]: r for r in res.rows}
    assert sorted(rows) == ["D", "acme/tiny-ddpm@" + "0123abcd" * 5, "org2/other@" + "feedbeef" * 5]
    assert rows["acme/tiny-ddpm@" + "0123abcd" * 5]["revision"] == "0123abcd" * 5
    serial = _rows(scanned)
    for name, same in (("acme/tiny-ddpm@" + "0123abcd" * 5, "coll/D2"), ("D", "coll/D")):
        assert rows[name]["status"] == "done" and rows[name]["verdict"] == serial[same]["verdict"]
        assert rows[name]["value"] == pytest.approx(serial[same]["value"])
    assert res.exit_code() == 0 and "org2/other@" in (tmp_path / "out" / "report.html").read_text()


def test_bad_input_gets_a_row_and_exit_code_1(zoo, tmp_path):
    coll = tmp_path / "coll"
    shutil.copytree(zoo / "coll" / "D", coll / "good")
    (coll / "notes").mkdir()
    (coll / "notes" / "README.txt").write_text("not a model")
    shutil.copytree(zoo / "coll" / "D", coll / "truncated")
    w = coll / "truncated" / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    shutil.copytree(zoo / "coll" / "D", coll / "latent")
    index = json.loads((coll / "latent" / "model_index.json").read_text())
    (coll / "latent" / "model_index.json").write_text(json.dumps({**index, "vae": ["diffusers", "AutoencoderKL"]}))
    out = tmp_path / "out"
    r = invoke(["scan", coll, "--out", out, *FLAGS])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    rows = _rows(out)
    assert rows["coll/good"]["status"] == "done"
    expect = {"coll/notes": "neither model_index.json nor config.json", "coll/truncated": "corrupted or unsafe weights",
              "coll/latent": "latent diffusion models are not supported"}
    for name, words in expect.items():
        row = rows[name]
        assert (row["status"], row["error_kind"]) == ("failed", "bad-input") and words in row["error"], row
        assert "\n" not in row["error"] and row["out_dir"] is None
    assert r.stderr.count("FAILED (bad-input)") == 0  # --no-progress: no per-model lines
    page = (out / "report.html").read_text()
    assert "<b>4</b> models" in page and "3 failed" in page
    # failed rows are kept on a rerun, retried with --retry-failed
    assert invoke(["scan", coll, "--out", out, *FLAGS]).exit_code == 1
    assert _rows(out)["coll/notes"]["attempts"] == 1
    assert invoke(["scan", coll, "--out", out, *FLAGS, "--retry-failed"]).exit_code == 1
    assert _rows(out)["coll/notes"]["attempts"] == 2 and _rows(out)["coll/good"]["attempts"] == 1


def test_exit_codes_and_bad_paths(zoo, scanned, tmp_path):
    # everything called backdoored by a huge threshold: exit 3 with --fail-on-backdoor (a new configuration: rerun)
    r = invoke(["scan", zoo / "coll", "--out", tmp_path / "o", *FLAGS, "--threshold", 10, "--fail-on-backdoor"])
    assert r.exit_code == 3, r.output
    assert invoke(["scan", zoo / "coll", "--out", tmp_path / "o", *FLAGS, "--threshold", 10]).exit_code == 0
    line = fails(["scan", tmp_path / "nope", "--out", tmp_path / "o2", *FLAGS], tmp_path / "o2")
    assert "does not exist" in line and "nope" in line
    weights = zoo / "coll" / "D" / "unet" / "diffusion_pytorch_model.safetensors"
    assert f"pass its folder {weights.parent}" in fails(["scan", weights, "--out", tmp_path / "o3", *FLAGS])
    line = fails(["scan", zoo / "coll", "--out", tmp_path / "o4", *FLAGS, "--steps", 0], tmp_path / "o4")
    assert "--steps 0" in line
    assert "--workers -1" in fails(["scan", zoo / "coll", "--out", tmp_path / "o4", *FLAGS, "--workers", -1])
    # a given trigger is judged on every model: only engine and detection options apply, as with detect
    given = ["--trigger", "BOX_14", "--n-eval", 4, "--device", "cpu", "--no-progress"]
    assert "'epochs' has no effect" in fails(["scan", zoo / "coll", "--out", tmp_path / "o5", *given, "--epochs", 3])
    res = json.loads(ok(["scan", zoo / "coll", "--out", tmp_path / "o6", *given, "--json"]).stdout)
    assert res["totals"]["done"] == 3 and all(r["config"]["trigger"] == "BOX_14" for r in res["rows"])
    text = invoke(["scan", "--help"]).output
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"  {code}" in text, text
    for flag in ("--steps", "--method", "--calibration", "--trigger", "--threshold", "--workers", "--backend",
                 "--ray-address", "--retry-failed", "--fail-on-backdoor"):
        assert flag in text, flag

"""Where a scan's models run: in the driver (one worker), in N local worker processes (one per GPU on CUDA; on CPU
the cores split between them), or as one Ray task per model. Each backend yields pdfast.scanner.job results as models
finish, in any order; a worker that dies yields a failed row for the model it held, and the scan goes on."""
from __future__ import annotations

import logging
import os
from collections import deque
from typing import Iterator

from ..errors import PdfastError
from .job import brief, crashed, run_one

log = logging.getLogger(__name__)
BACKENDS = ("local", "ray")


def cpu_cores() -> int:
    """The cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def plan(workers: int, device: str) -> list[dict]:
    """One dict per worker: its device ('cuda:i' on CUDA, one per GPU at most) and its torch threads (on CPU the
    cores split evenly; None for a lone worker, which keeps torch's setting). ``workers`` 0: one per GPU, or 1."""
    if workers < 0:
        raise PdfastError(f"--workers {workers} must be 0 (automatic) or more")
    if device.startswith("cuda"):
        import torch

        gpus = torch.cuda.device_count()
        n = min(workers or gpus, gpus)
        if workers > gpus:
            log.warning("--workers %d but %d GPU(s): one worker per GPU", workers, gpus)
        return [{"device": f"cuda:{i}", "threads": None} for i in range(n)]
    n = workers or 1
    threads = None if n == 1 else max(1, cpu_cores() // n)
    return [{"device": device, "threads": threads} for _ in range(n)]


def run_tasks(tasks: list[dict], slots: list[dict], backend: str = "local",
              ray_address: str | None = None) -> Iterator[dict]:
    """Run every task on the backend, yielding each result (pdfast.scanner.job.run_one's dict) when it is done."""
    if backend == "ray":
        yield from run_ray(tasks, slots[0]["device"].split(":")[0], ray_address)
    elif len(slots) == 1:
        for task in tasks:
            yield run_one({**task, **slots[0]})
    else:
        yield from run_pool(tasks, slots)


def _worker_main(conn, slot: dict) -> None:
    """A local worker: run each task the driver sends over ``conn``, send back its result; None ends it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    while True:
        task = conn.recv()
        if task is None:
            return
        conn.send(run_one({**task, **slot}))


def _start(ctx, slot: dict):
    """A worker process for ``slot`` and the driver's end of its pipe."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_worker_main, args=(child, slot), daemon=True)
    proc.start()
    child.close()
    return proc, parent


def run_pool(tasks: list[dict], slots: list[dict]) -> Iterator[dict]:
    """Local worker processes (spawned: safe with CUDA), one task each at a time; a dead worker's task becomes a
    failed row and a new worker takes its slot."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    pending, workers, busy = deque(tasks), {}, {}
    try:
        while pending or busy:
            for i, slot in enumerate(slots):
                if i in busy or not pending:
                    continue
                if i in workers and not workers[i][0].is_alive():
                    _stop({i: workers.pop(i)})  # died while idle: nothing lost, a new one takes its slot
                if i not in workers:
                    workers[i] = _start(ctx, slot)
                busy[i] = pending.popleft()
                try:
                    workers[i][1].send(busy[i])
                except OSError:  # it died already: wait() sees its sentinel
                    pass
            ready = wait([w[1] for i, w in workers.items() if i in busy] +
                         [w[0].sentinel for i, w in workers.items() if i in busy])
            for i in [i for i in busy if workers[i][1] in ready or workers[i][0].sentinel in ready]:
                state, result = _receive(workers[i])
                if state == "wait":
                    continue
                if state == "dead":
                    proc, conn = workers.pop(i)
                    conn.close()
                    why = f"worker process died (exit code {proc.exitcode}) on this model"
                    result = crashed({**busy[i], **slots[i]}, why)
                del busy[i]
                yield result
    finally:
        _stop(workers)


def _receive(worker) -> tuple[str, dict | None]:
    """("result", what the worker sent), ("dead", None) when it died first, or ("wait", None)."""
    proc, conn = worker
    try:
        if conn.poll():
            return "result", conn.recv()
    except (EOFError, OSError):
        pass
    if proc.is_alive():
        return "wait", None
    proc.join(5)
    return "dead", None


def _stop(workers: dict) -> None:
    """Ask the workers to end, then end those that do not."""
    for proc, conn in workers.values():
        try:
            conn.send(None)
        except OSError:
            pass
    for proc, conn in workers.values():
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        conn.close()


def require_ray():
    """The ray module, or a PdfastError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise PdfastError("--backend ray needs Ray; install it with pip install 'pdfast[ray]'") from None
    return ray


def run_ray(tasks: list[dict], device: str, address: str | None) -> Iterator[dict]:
    """One Ray task per model (a GPU each on CUDA, max_retries 0); started here unless Ray is already initialised
    (then that instance is used and left running). A lost task is a failed row."""
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    cuda = device == "cuda"
    remote = ray.remote(num_gpus=1 if cuda else 0, num_cpus=1, max_retries=0)(run_one)
    refs = {remote.remote({**t, "device": device, "threads": None if cuda else 1}): t for t in tasks}
    try:
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            task = refs.pop(done[0])
            try:
                yield ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - a worker that died, a node lost: that model's row
                yield crashed({**task, "device": device}, f"Ray task failed: {brief(err)}")
    finally:
        for ref in refs:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()

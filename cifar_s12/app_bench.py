"""How fast the app answers: classify + GradCAM through its HTTP API (gradio_client), with 1 and with N concurrent
clients, each sending the example images in turn. ``python -m cifar_s12 app-bench`` prints and writes the figures.

The server runs in a process of its own (started here on a free 127.0.0.1 port unless ``--url`` names a running
one), so the clients' Python does not share the server's interpreter. Each request's latency is the whole round
trip a user's browser makes: the upload, the queue, the model, GradCAM, and the results' download.
"""
from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

from .errors import UserError
from .weights import example_images


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_app(url: str, process: subprocess.Popen | None = None, timeout: float = 300.0):
    """A gradio_client Client once the app answers (None never: a UserError if it does not within ``timeout``)."""
    from gradio_client import Client

    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise UserError(f"the app exited with code {process.returncode} before answering")
        try:
            return Client(url, verbose=False)
        except Exception:
            if time.monotonic() > deadline:
                raise UserError(f"the app at {url} did not answer within {timeout:.0f} s") from None
            time.sleep(0.5)


@contextmanager
def running_app(command: list[str], env: dict | None = None, cwd: str | None = None, timeout: float = 300.0):
    """Start ``command`` serving an app on a free port (it gets GRADIO_SERVER_PORT/NAME); yield (url, client)."""
    port = free_port()
    env = {**os.environ, **(env or {}), "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    url = f"http://127.0.0.1:{port}/"
    # The server's log goes to a file (a pipe nobody reads would fill and stall it); its tail explains a failure.
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen([c.replace("{port}", str(port)) for c in command], env=env, cwd=cwd,
                                   stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            try:
                client = wait_for_app(url, process, timeout)
            except UserError as err:
                log.seek(0)
                tail = " | ".join(line.strip() for line in log.read().splitlines()[-3:])
                raise UserError(f"{err}: {tail}") from None
            yield url, client
        finally:
            process.send_signal(signal.SIGINT)  # Gradio's own shutdown: its cache of the run's files is cleared
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between ranks: statistics.quantiles' 'inclusive' method."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if q < 100 else max(values)


def run_clients(url: str, clients: int, requests: int, layer: str | None = None) -> dict:
    """``clients`` threads, each with its own Client, each sending ``requests`` classify + GradCAM requests."""
    from gradio_client import Client, handle_file

    images = example_images()
    if not images:
        raise UserError("no example images to send (examples/*.png)")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    connected = [Client(url, verbose=False) for _ in range(clients)]

    def work(client, offset: int):
        for i in range(requests):
            start = time.perf_counter()
            try:
                client.predict(handle_file(str(images[(offset + i) % len(images)])), 3, True, layer, 0.5,
                               api_name="/classify")
            except Exception as err:  # counted and reported, not raised: one failure must not hide the others
                with lock:
                    errors.append(f"{type(err).__name__}: {err}"[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(connected)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    if not latencies:
        raise UserError(f"every request failed; the first: {errors[0] if errors else 'none sent'}")
    ms = [1000 * s for s in latencies]
    return {"clients": clients, "requests": len(ms), "errors": len(errors), "first_error": errors[0] if errors else None,
            "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "max_ms": max(ms),
            "requests_per_second": len(ms) / wall, "wall_seconds": wall}


def run_app_bench(checkpoint: str | None = None, clients: tuple[int, ...] = (1, 8), requests: int = 200,
                  url: str | None = None, warmup: int = 5) -> dict:
    """Figures for each client count, after ``warmup`` untimed requests."""
    import torch

    from .utils import provenance

    def measure(server_url: str) -> list[dict]:
        run_clients(server_url, 1, warmup)
        return [run_clients(server_url, n, requests) for n in clients]

    if url:
        wait_for_app(url, timeout=10)  # an address with no app is one error line, not a traceback
        rows = measure(url)
    else:
        command = [sys.executable, "-m", "cifar_s12", "app", "--port", "{port}"]
        if checkpoint:
            command += ["--checkpoint", str(checkpoint)]
        with running_app(command) as (server_url, _):
            rows = measure(server_url)
    return {"endpoint": "/classify (top 3 + GradCAM, default layer)", "requests_per_client": requests,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "runs": rows,
            "git_commit": provenance()["git_commit"]}

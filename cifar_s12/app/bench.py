"""How fast the app answers: classify + GradCAM through its HTTP API, with 1 and with N concurrent clients, each
sending the example images in turn. ``python -m cifar_s12 app-bench`` prints and writes the figures.

The server runs in a process of its own (started here on a free 127.0.0.1 port unless ``--url`` names a running
one), so the clients' Python does not share the server's interpreter. Each request's latency is the whole round
trip a user's browser makes: the upload, the queue, the model, GradCAM, and the results' download. The default
client speaks Gradio's REST API over one kept-alive connection, as a browser tab does; ``via="gradio_client"``
measures the same requests through gradio_client, whose own work (threads, a session stream, temporary copies
of the results) adds about 170 ms a request on a 2-core CPU: that is the client's cost, not the app's.
"""
from __future__ import annotations

import json
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
from pathlib import Path

from ..utils import UserError


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
            try:
                yield url, client
            finally:
                client.close()  # its open result stream would hold the server's graceful shutdown up
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


PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"  # a whole PNG begins and ends so


def classify_over_http(http, url: str, image: Path, layer: str | None = None) -> list:
    """One classify + GradCAM request through the app's REST API, as a browser makes it: upload the image, call
    ``/classify`` and read its result stream, then download the result images (checked whole). Gradio documents
    the API in "Querying Gradio Apps with Curl": POST .../call/NAME gives an event id, GET .../call/NAME/ID streams
    ``event:``/``data:`` lines."""
    api = f"{url.rstrip('/')}/gradio_api"
    upload = http.post(f"{api}/upload", files={"files": (image.name, image.read_bytes(), "image/png")})
    upload.raise_for_status()
    payload = {"data": [{"path": upload.json()[0], "meta": {"_type": "gradio.FileData"}}, 3, True, layer, 0.5, 1]}
    call = http.post(f"{api}/call/classify", json=payload)
    call.raise_for_status()
    event, outputs = None, None
    with http.stream("GET", f"{api}/call/classify/{call.json()['event_id']}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                outputs = json.loads(line.split(":", 1)[1])
                break
    if event != "complete" or not isinstance(outputs, list):
        raise RuntimeError(f"the app answered {event!r}: {outputs!r}")
    for result in (outputs[0], outputs[2]):  # the 32x32 shown and the GradCAM overlay
        body = http.get(result["url"]).raise_for_status().content
        if not (body.startswith(PNG_START) and body.endswith(PNG_END)):
            raise RuntimeError(f"a result image came back cut short ({len(body)} bytes)")
    return outputs


def classify_with_gradio_client(client, image: Path, layer: str | None = None) -> list:
    """The same request through gradio_client, as a Python script would make it (its own overhead included)."""
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)), 3, True, layer, 0.5, 1, api_name="/classify")


CLIENTS = ("http", "gradio_client")


def run_clients(url: str, clients: int, requests: int, layer: str | None = None, via: str = "http") -> dict:
    """``clients`` threads, each with its own connection, each sending ``requests`` classify + GradCAM requests
    ``via`` plain HTTP (a browser's round trip) or gradio_client."""
    import httpx
    from gradio_client import Client

    from .shipped_weights import example_images  # here, not above: the CLI imports this module to build its parser

    images = example_images()
    if not images:
        raise UserError("no example images to send (examples/*.png)")
    if via not in CLIENTS:
        raise UserError(f"unknown client {via!r}; choose one of: {', '.join(CLIENTS)}")
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    if via == "http":
        connected = [httpx.Client(timeout=120) for _ in range(clients)]
        send = [lambda image, c=c: classify_over_http(c, url, image, layer) for c in connected]
    else:
        connected = [Client(url, verbose=False) for _ in range(clients)]
        send = [lambda image, c=c: classify_with_gradio_client(c, image, layer) for c in connected]

    def work(offset: int):
        for i in range(requests):
            start = time.perf_counter()
            try:
                send[offset](images[(offset + i) % len(images)])
            except Exception as err:  # counted and reported, not raised: one failure must not hide the others
                with lock:
                    errors.append(f"{type(err).__name__}: {err}"[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - start)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    for c in connected:
        c.close()
    if not latencies:
        raise UserError(f"every request failed; the first: {errors[0] if errors else 'none sent'}")
    ms = [1000 * s for s in latencies]
    return {"clients": clients, "via": via, "requests": len(ms), "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "max_ms": max(ms),
            "requests_per_second": len(ms) / wall, "wall_seconds": wall}


def run_app_bench(checkpoint: str | None = None, clients: tuple[int, ...] = (1, 8), requests: int = 200,
                  url: str | None = None, warmup: int = 5, via: tuple[str, ...] = ("http",)) -> dict:
    """Figures for each client (``via``) and client count, after ``warmup`` untimed requests."""
    import torch

    from ..runs.provenance import cpu_name, provenance

    def measure(server_url: str) -> list[dict]:
        rows = []
        for client in via:
            run_clients(server_url, 1, warmup, via=client)
            rows += [run_clients(server_url, n, requests, via=client) for n in clients]
        return rows

    if url:
        wait_for_app(url, timeout=10)  # an address with no app is one error line, not a traceback
        rows = measure(url)
    else:
        command = [sys.executable, "-m", "cifar_s12", "app", "--port", "{port}"]
        if checkpoint:
            command += ["--checkpoint", str(checkpoint)]
        with running_app(command) as (server_url, _):
            rows = measure(server_url)
    return {"endpoint": "/classify (top 3 + GradCAM, default layer; upload and result images' download included)",
            "requests_per_client": requests,
            "cpu": cpu_name(), "torch_threads": torch.get_num_threads(), "runs": rows, **provenance()}

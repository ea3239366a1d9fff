"""A Python client for the labeling API, and a load generator built on it.

    client = LabelClient("http://127.0.0.1:8000", token)
    while (item := client.next("sentiment")) is not None:
        client.submit(item["assignment"], ranks=[0, 1])   # in the order shown

`run_load` drives many annotators at once against a real server (`ServerProcess`): the load
test asserts that every submission is stored exactly once, and `python -m bench label` reports
the latencies.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx


class LabelClient:
    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.http = httpx.Client(base_url=url, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"})
        self.project = ""

    def close(self) -> None:
        self.http.close()

    def me(self) -> dict:
        return self._ok(self.http.get("/api/me")).json()

    def next(self, project: str) -> dict | None:
        """The next item ({assignment, prompt, responses in display order}), or None."""
        self.project = project
        return self._ok(self.http.get(f"/api/projects/{project}/next")).json()["item"]

    def submit(self, assignment: str, ranks: Sequence[int] | None = None,
               choice: str = "rank", rationale: str = "",
               project: str | None = None) -> httpx.Response:
        """Ranks in display order, lower is better. Returns the response: 201 stored, 200 a
        resubmission of a stored label."""
        return self._ok(self.http.post(
            f"/api/projects/{project or self.project}/labels",
            json={"assignment": assignment, "choice": choice,
                  "ranks": None if ranks is None else list(ranks), "rationale": rationale}))

    @staticmethod
    def _ok(response: httpx.Response) -> httpx.Response:
        response.raise_for_status()
        return response


@dataclass
class LoadResult:
    stored: dict[str, int] = field(default_factory=dict)  # assignment -> label id (201s)
    duplicates: dict[str, int] = field(default_factory=dict)  # assignment -> id of resends
    statuses: Counter = field(default_factory=Counter)  # status code of every request
    submit_seconds: list[float] = field(default_factory=list)
    next_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # transport errors (server gone)
    wall: float = 0.0


def run_load(url: str, tokens: Sequence[str], project: str, total: int,
             resend_every: int = 10, choose: Callable[[dict], list[int]] | None = None,
             stop: threading.Event | None = None) -> LoadResult:
    """One thread per token, each labelling until `total` labels are acknowledged in all;
    every `resend_every`-th label is submitted twice, as a double click would. Stops early
    when `stop` is set or the server goes away."""
    result, lock = LoadResult(), threading.Lock()
    reserved = [0]
    stop = stop or threading.Event()
    choose = choose or (lambda item: list(range(len(item["responses"]))))

    def annotator(token: str) -> None:
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"Bearer {token}"}) as http:
            while not stop.is_set():
                with lock:
                    if reserved[0] >= total:
                        return
                    reserved[0] += 1
                    n = reserved[0]
                try:
                    t0 = time.perf_counter()
                    r = http.get(f"/api/projects/{project}/next")
                    t1 = time.perf_counter()
                    with lock:
                        result.statuses[r.status_code] += 1
                        result.next_seconds.append(t1 - t0)
                    item = r.json()["item"] if r.status_code == 200 else None
                    if item is None:
                        return
                    # a response to rate alone is rated good; a comparison ranked by `choose`
                    body = ({"choice": "good"} if len(item["responses"]) == 1
                            else {"choice": "rank", "ranks": choose(item)})
                    body["assignment"] = item["assignment"]
                    for attempt in range(2 if n % resend_every == 0 else 1):
                        t0 = time.perf_counter()
                        r = http.post(f"/api/projects/{project}/labels", json=body)
                        elapsed = time.perf_counter() - t0
                        with lock:
                            result.statuses[r.status_code] += 1
                            result.submit_seconds.append(elapsed)
                            if r.status_code == 201:
                                result.stored[item["assignment"]] = r.json()["label"]
                            elif r.status_code == 200 and attempt == 1:
                                result.duplicates[item["assignment"]] = r.json()["label"]
                except httpx.TransportError as e:
                    with lock:
                        result.errors.append(f"{type(e).__name__}: {e}")
                    return

    started = time.perf_counter()
    threads = [threading.Thread(target=annotator, args=(t,), daemon=True) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall = time.perf_counter() - started
    return result


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`tether label serve` in a subprocess on 127.0.0.1 and a free port (tests, benchmarks)."""

    def __init__(self, db: str | Path, log: Path):
        self.db, self.log = db, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether", "label", "serve", f"db={self.db}",
             f"port={self.port}"], stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start in {timeout} s: {self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as when a machine loses power or OOMs."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

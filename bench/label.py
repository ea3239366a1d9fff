"""Labeling server under load: latency of 50 annotators submitting at once.

A real `tether label serve` (SQLite, WAL, synchronous=FULL) in its own process on 127.0.0.1;
--clients threads, one annotator token each, label until --total labels are acknowledged, every
tenth submitted twice (a double click), each item shown to --overlap annotators. Prints the
p50/p95/p99 latency of submissions and of "next item" requests, the throughput, and the checks
the load test asserts (every submission stored exactly once, no 5xx).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench import machine, save_results
from tether.labeling.client import ServerProcess, percentile, run_load
from tether.labeling.projects import create_project
from tether.labeling.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--total", type=int, default=1000)
    parser.add_argument("--overlap", type=int, default=2)


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "labels.db"
        store = Store(str(db))
        items = args.total  # enough for any number of clients: each labels an item once
        create_project(store, "bench", [(f"item {i}", {
            "prompt": f"Write a review of film {i}.",
            "responses": [f"A fine film, number {i}. " * 8, f"A dull film, number {i}. " * 8]})
            for i in range(items)], overlap=args.overlap)
        tokens = [store.add_annotator(f"a{i}") for i in range(args.clients)]
        server = ServerProcess(db, Path(tmp) / "server.log").start()
        try:
            result = run_load(server.url, tokens, "bench", args.total)
        finally:
            server.stop()
        stored = len(store.labels("bench"))
    errors = sum(n for code, n in result.statuses.items() if code >= 500)
    figures = {
        "clients": args.clients, "acknowledged": len(result.stored), "stored": stored,
        "duplicates_resent": len(result.duplicates), "server_errors": errors,
        "wall_s": round(result.wall, 2),
        "labels_per_s": round(len(result.stored) / result.wall, 1),
        **{f"submit_p{q}_ms": round(1000 * percentile(result.submit_seconds, q), 1)
           for q in (50, 95, 99)},
        **{f"next_p{q}_ms": round(1000 * percentile(result.next_seconds, q), 1)
           for q in (50, 95, 99)},
    }
    figures["machine"] = machine()
    print(f"{args.clients} clients, {len(result.stored)} labels acknowledged, "
          f"{stored} stored, {len(result.duplicates)} double submissions answered as "
          f"duplicates, {errors} 5xx, in {result.wall:.1f} s ({figures['labels_per_s']} "
          f"labels/s)")
    print(f"submit latency: p50 {figures['submit_p50_ms']} ms, p95 {figures['submit_p95_ms']} "
          f"ms, p99 {figures['submit_p99_ms']} ms")
    print(f"next-item latency: p50 {figures['next_p50_ms']} ms, p95 {figures['next_p95_ms']} "
          f"ms, p99 {figures['next_p99_ms']} ms")
    save_results("label", figures)

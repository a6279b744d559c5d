"""The benchmark's smoke run, as CI runs it: `herald bench --quick` end to end (pgbench
ceiling, memory per socket, Herald's three nodes and the Socket.IO peer's, bulk fan-out,
replay storm), asserting correctness only; figures are for bench runs by hand."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import schema

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.bench
@pytest.mark.timeout(900)
def test_quick_bench_runs_both_systems_and_herald_loses_nothing(make_database, tmp_path):
    url = make_database()
    schema.upgrade(url)
    out = tmp_path / "benchmarks.md"
    run = subprocess.run(
        [sys.executable, "-m", "app.cli", "bench", "--quick", "--database-url", url,
         "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=850)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = out.read_text()
    assert out.with_suffix(".png").stat().st_size > 10_000  # the chart was drawn

    ceiling = re.findall(r"^\| (insert|NOTIFY)[^|]*\| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \|$",
                         report, re.M)
    assert len(ceiling) == 4 and all(int(n.replace(",", "")) > 0
                                     for row in ceiling for n in row[1:])
    assert re.search(r"^\| Herald \| \d+ \| \d+ \| [\d.]+ \|$", report, re.M)

    sections = report.split("\n## ")
    herald = next(s for s in sections if s.startswith("Herald, U = "))
    peer = next(s for s in sections if s.startswith("Socket.IO 4"))
    # scenario | sent | delivered/s | lost | dup | out of order | ...
    (row,) = re.findall(r"^\| smoke [^|]+\| (\d+) \| [\d,]+ \| (\d+) \| (\d+) \| (\d+) \|",
                        herald, re.M)
    assert int(row[0]) == 300 and row[1:] == ("0", "0", "0")
    assert "Bulk fan-out" in herald and "Replay storm" in herald
    assert herald.count("(0 lost, 0 duplicated, 0 out of order)") == 2
    (peer_row,) = re.findall(r"^\| smoke [^|]+\| (\d+) \| [\d,]+ \| (\d+) \|", peer, re.M)
    assert int(peer_row[0]) == 300  # the peer ran the same workload

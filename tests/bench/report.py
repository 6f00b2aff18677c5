"""Pure helpers of the benchmark: parse wrk's output, compute added latency, write the report."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)


def to_ms(value: str, unit: str) -> float:
    """A wrk duration in milliseconds."""
    return float(value) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, Any]:
    """Throughput, latency percentiles (ms) and error count from ``wrk --latency`` output."""
    percentiles = {int(p): to_ms(v, u) for p, v, u in _PERCENTILE.findall(output)}
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket:
        errors += sum(int(x) for x in socket.groups())
    return {
        "rps": float(rps_match.group(1)) if rps_match else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "p50_ms": percentiles.get(50, 0.0),
        "p90_ms": percentiles.get(90, 0.0),
        "p99_ms": percentiles.get(99, 0.0),
        "errors": errors,
    }


def added(results: list[dict[str, Any]], workload: str, concurrency: int) -> dict[str, float]:
    """Through-gateway minus direct latency, per percentile, for one workload and concurrency."""

    def pick(target: str) -> dict[str, Any]:
        return next(
            r
            for r in results
            if r["workload"] == workload and r["target"] == target and r["concurrency"] == concurrency
        )

    direct, gateway = pick("direct"), pick("gateway")
    return {f"added_{p}_ms": round(gateway[f"{p}_ms"] - direct[f"{p}_ms"], 2) for p in ("p50", "p90", "p99")}


def summary_line(results: list[dict[str, Any]], rss_mb: list[float]) -> str:
    """The line tools read: Patient read at concurrency 32, gateway rps, largest worker RSS."""
    extra = added(results, "read", 32)
    gateway = next(
        r for r in results if r["workload"] == "read" and r["target"] == "gateway" and r["concurrency"] == 32
    )
    return (
        f"bench: read added_p50_ms={extra['added_p50_ms']:.1f} added_p99_ms={extra['added_p99_ms']:.1f} "
        f"rps={gateway['rps']:.0f} rss_mb={max(rss_mb, default=0):.0f}"
    )


def markdown(results: list[dict[str, Any]], rss_mb: list[float], machine: dict[str, Any]) -> str:
    lines = [
        f"Benchmark of {machine['date']} on {machine['cores']} cores ({machine['cpu']}), "
        f"{machine['seconds_per_point']} s per point. Gateway worker RSS after the run: {rss_mb} MB.",
        "",
        "| workload | c | direct rps | gateway rps | direct p50 | gateway p50 "
        "| added p50 | added p90 | added p99 | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        if row["target"] != "gateway" or not any(
            r["target"] == "direct" and r["workload"] == row["workload"] for r in results
        ):
            continue
        direct = next(
            r
            for r in results
            if r["workload"] == row["workload"]
            and r["target"] == "direct"
            and r["concurrency"] == row["concurrency"]
        )
        extra = added(results, row["workload"], row["concurrency"])
        lines.append(
            f"| {row['workload']} | {row['concurrency']} | {direct['rps']:.0f} | {row['rps']:.0f} | "
            f"{direct['p50_ms']:.2f} | {row['p50_ms']:.2f} | {extra['added_p50_ms']:.2f} | "
            f"{extra['added_p90_ms']:.2f} | "
            f"{extra['added_p99_ms']:.2f} | {row['errors'] + direct['errors']} |"
        )
    for row in results:
        if row["workload"].startswith("letters_list_"):
            lines.append(
                f"\nLetters list, page of 10, c=32, patient with "
                f"{row['workload'].rsplit('_', 1)[1]} letters: "
                f"{row['rps']:.0f} rps, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms."
            )
    return "\n".join(lines) + "\n"


def write_outputs(
    out: Path, results: list[dict[str, Any]], rss_mb: list[float], machine: dict[str, Any]
) -> None:
    """``results.json``, ``results.md`` and ``latency.png`` under ``out``."""
    (out / "results.json").write_text(
        json.dumps({"machine": machine, "rss_mb": rss_mb, "results": results}, indent=2)
    )
    (out / "results.md").write_text(markdown(results, rss_mb, machine))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({r["workload"] for r in results if not r["workload"].startswith("letters_list_")})
    figure, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 3.5), squeeze=False)
    for axis, workload in zip(axes[0], workloads, strict=True):
        for target, style in (("direct", "--"), ("gateway", "-")):
            rows = sorted(
                (r for r in results if r["workload"] == workload and r["target"] == target),
                key=lambda r: r["concurrency"],
            )
            for percentile in ("p50", "p99"):
                axis.plot(
                    [r["concurrency"] for r in rows],
                    [r[f"{percentile}_ms"] for r in rows],
                    style,
                    marker="o",
                    label=f"{target} {percentile}",
                )
        axis.set_xscale("log", base=2)
        axis.set_title(workload)
        axis.set_xlabel("concurrency")
        axis.set_ylabel("latency (ms)")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "latency.png", dpi=110)
    plt.close(figure)

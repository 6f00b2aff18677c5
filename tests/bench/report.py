"""Pure helpers of the benchmark: the wrk script, wrk's output, ratios, targets, the report files.

Every measured point is a dict with ``workload``, ``target`` and ``concurrency`` plus what :func:`parse_wrk`
returns. Targets: ``direct`` (the stub itself), ``gateway``, ``bare`` (the bare pass-through of
``tests/bench/baseline.py``, with a ``client``), ``bare_db`` (the same with one SELECT and one INSERT per
request) and ``client`` (the client comparison: the bare pass-through with another ``client``).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PERCENTILE = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", re.M)
_LATENCY = re.compile(r"^\s*Latency\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(us|ms|s|m)", re.M)
_STATUS_LINE = re.compile(r"^bench-status:(.*)$", re.M)

#: Clients of the comparison, in table order; the ratios are against ``REFERENCE_CLIENT``.
CLIENTS = ("httpx", "httpx-aiohttp", "aiohttp", "pyreqwest")
REFERENCE_CLIENT = "aiohttp"

#: Appended to every wrk script: counts answers by status in each thread (a 503 whose Content-Type is
#: problem JSON counts as ``shed``) and prints the totals on one line, ``bench-status: 200=… shed=…``.
STATUS_COUNTER_LUA = """
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  statuses = {}
end
function response(status, headers, body)
  local key = tostring(status)
  if status == 503 then
    for name, value in pairs(headers) do
      if string.lower(name) == "content-type" and string.find(value, "problem+json", 1, true) then
        key = "shed"
      end
    end
  end
  statuses[key] = (statuses[key] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("statuses")) do
      total[key] = (total[key] or 0) + count
    end
  end
  local parts = {}
  for key, count in pairs(total) do
    parts[#parts + 1] = key .. "=" .. count
  end
  table.sort(parts)
  io.write("bench-status: " .. table.concat(parts, " ") .. "\\n")
end
"""


def lua_script(method: str, body: Any, headers: dict[str, str]) -> str:
    """The wrk script of one request (method, JSON body, headers) plus the status counter."""
    lines = [f'wrk.method = "{method}"']
    all_headers = dict(headers)
    if body is not None:
        all_headers["Content-Type"] = "application/json"
        lines.append(f"wrk.body = {json.dumps(json.dumps(body))}")
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in all_headers.items()]
    return "\n".join(lines) + "\n" + STATUS_COUNTER_LUA


def to_ms(value: str, unit: str) -> float:
    """A wrk duration in milliseconds."""
    return float(value) * _UNITS[unit]


def parse_statuses(output: str) -> dict[str, int] | None:
    """The ``bench-status:`` line of the status counter (``{"200": 4000, "shed": 12}``), or None."""
    match = _STATUS_LINE.search(output)
    if match is None:
        return None
    counts: dict[str, int] = {}
    for part in match.group(1).split():
        key, _, value = part.partition("=")
        counts[key] = int(value)
    return counts


def parse_wrk(output: str) -> dict[str, Any]:
    """Throughput, latency (ms) and answers by kind from ``wrk --latency`` output.

    ``rps`` is every answer per second (wrk's Requests/sec); ``served_rps`` the 2xx answers per second.
    ``shed`` counts 503 problem-JSON answers (the gateway's load shedding), ``errors`` socket errors
    (connect, read, write, timeout) plus every other non-2xx answer. Without the status counter's line
    (a script without it), every non-2xx/3xx answer wrk reports is an error and nothing is shed.
    """
    percentiles = {int(p): to_ms(v, u) for p, v, u in _PERCENTILE.findall(output)}
    latency_max = _LATENCY.search(output)
    rps_match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    requests = int(total.group(1)) if total else 0
    rps = float(rps_match.group(1)) if rps_match else 0.0
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    socket_errors = sum(int(x) for x in socket.groups()) if socket else 0
    statuses = parse_statuses(output)
    if statuses is None:
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        rejected = int(non2xx.group(1)) if non2xx else 0
        served, shed, other = requests - rejected, 0, rejected
        statuses = {}
    else:
        served = sum(n for key, n in statuses.items() if key.isdigit() and 200 <= int(key) < 300)
        shed = statuses.get("shed", 0)
        other = sum(statuses.values()) - served - shed
    return {
        "rps": rps,
        "served_rps": round(rps * served / requests, 2) if requests else 0.0,
        "requests": requests,
        "served": served,
        "shed": shed,
        "errors": socket_errors + other,
        "statuses": statuses,
        "p50_ms": percentiles.get(50, 0.0),
        "p90_ms": percentiles.get(90, 0.0),
        "p99_ms": percentiles.get(99, 0.0),
        "max_ms": to_ms(*latency_max.groups()) if latency_max else 0.0,
    }


def parse_vegeta(report: dict[str, Any], seconds: float) -> dict[str, Any]:
    """A point from ``vegeta report -type=json`` (latencies in ns) in the shape of :func:`parse_wrk`."""
    latencies = report.get("latencies", {})
    codes = {str(code): int(n) for code, n in (report.get("status_codes") or {}).items()}
    requests = int(report.get("requests", 0))
    served = sum(n for code, n in codes.items() if code.isdigit() and 200 <= int(code) < 300)
    return {
        "rps": round(requests / seconds, 2) if seconds else 0.0,
        "served_rps": round(float(report.get("throughput", 0.0)), 2),
        "requests": requests,
        "served": served,
        "shed": 0,
        "errors": requests - served,
        "statuses": codes,
        **{f"p{p}_ms": round(latencies.get(f"{p}th", 0) / 1e6, 3) for p in (50, 90, 99)},
        "max_ms": round(latencies.get("max", 0) / 1e6, 3),
    }


OPEN_LOOP = ("open_direct", "open_gateway", "open_bare")


def _p50_p99(point: dict[str, Any] | None) -> str:
    return "n/a" if point is None else f"{point['p50_ms']:.2f} / {point['p99_ms']:.2f}"


def _cpu_us(point: dict[str, Any] | None) -> str:
    return _fmt(float(point.get("cpu_us_per_request", math.nan)) if point else math.nan, 0)


def open_loop_table(results: list[dict[str, Any]]) -> list[str]:
    """The fixed-rate points: latency at each offered rate, and what the gateway adds; empty when none."""
    rates = sorted({row["rate"] for row in results if row["target"] in OPEN_LOOP})
    if not rates:
        return []
    lines = [
        "| offered reads/s | direct p50 / p99 | bare p50 / p99 | gateway p50 / p99 | gateway max "
        "| added p50 / p99 (gw - direct) | gateway CPU µs/read | bare CPU µs/read | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rate in rates:
        direct, gateway, bare = (
            next((r for r in results if r["target"] == target and r.get("rate") == rate), None)
            for target in OPEN_LOOP
        )
        added = (
            f"{gateway['p50_ms'] - direct['p50_ms']:.2f} / {gateway['p99_ms'] - direct['p99_ms']:.2f}"
            if gateway and direct
            else "n/a"
        )
        errors = sum(point["errors"] for point in (direct, gateway, bare) if point)
        lines.append(
            f"| {rate} | {_p50_p99(direct)} | {_p50_p99(bare)} | {_p50_p99(gateway)} | "
            f"{_fmt(gateway['max_ms'] if gateway else math.nan, 1)} | {added} | {_cpu_us(gateway)} "
            f"| {_cpu_us(bare)} | {errors} |"
        )
    return lines


def find(
    results: list[dict[str, Any]],
    workload: str,
    target: str,
    concurrency: int,
    client: str | None = None,
) -> dict[str, Any] | None:
    """The point measured for ``workload``/``target``/``concurrency`` (and ``client``), or None."""
    for row in results:
        if (
            row["workload"] == workload
            and row["target"] == target
            and row["concurrency"] == concurrency
            and (client is None or row.get("client") == client)
        ):
            return row
    return None


def added(results: list[dict[str, Any]], workload: str, concurrency: int) -> dict[str, float]:
    """Through-gateway minus direct latency, per percentile, for one workload and concurrency."""
    direct = find(results, workload, "direct", concurrency)
    gateway = find(results, workload, "gateway", concurrency)
    if direct is None or gateway is None:
        return {f"added_{p}_ms": math.nan for p in ("p50", "p90", "p99")}
    return {f"added_{p}_ms": round(gateway[f"{p}_ms"] - direct[f"{p}_ms"], 2) for p in ("p50", "p90", "p99")}


def served_rps(row: dict[str, Any] | None) -> float:
    """Served (2xx) answers per second of a point; NaN when the point was not measured."""
    if row is None:
        return math.nan
    return float(row.get("served_rps", row["rps"]))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN when either is missing or the denominator is zero."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return numerator / denominator


def ceiling_ratios(results: list[dict[str, Any]], workload: str, concurrency: int) -> dict[str, float]:
    """Gateway served rps over the bare pass-through's and over the bare+DB pass-through's."""
    gateway = served_rps(find(results, workload, "gateway", concurrency))
    return {
        "gw_bare": ratio(gateway, served_rps(find(results, workload, "bare", concurrency))),
        "gw_bare_db": ratio(gateway, served_rps(find(results, workload, "bare_db", concurrency))),
    }


#: Targets of the paired ceiling measurement (``run.py``: gateway and bare alternating at c=32).
PAIRED = ("gateway_paired", "bare_paired")
#: The DocumentReference search's target: gateway rps ÷ bare rps at c=32, at least this.
DOCUMENTS_SEARCH_RATIO = 0.5


def paired_rounds(results: list[dict[str, Any]], workload: str = "read") -> list[dict[str, float]]:
    """Each round of the paired ceiling measurement of ``workload``: both servers' requests/s and CPU per
    request, and ratios."""
    rows = [row for row in results if row["target"] in PAIRED and row["workload"] == workload]
    rounds: list[dict[str, float]] = []
    for number in sorted({row["round"] for row in rows}):
        gateway_row, bare_row = (
            next((r for r in rows if r["target"] == target and r.get("round") == number), None)
            for target in PAIRED
        )
        gateway, bare = served_rps(gateway_row), served_rps(bare_row)
        gateway_cpu, bare_cpu = (
            float(row.get("cpu_us_per_request", math.nan)) if row else math.nan
            for row in (gateway_row, bare_row)
        )
        rounds.append(
            {
                "round": number,
                "gateway": gateway,
                "bare": bare,
                "ratio": ratio(gateway, bare),
                "gateway_cpu_us": gateway_cpu,
                "bare_cpu_us": bare_cpu,
                "cpu_ratio": ratio(bare_cpu, gateway_cpu),
            }
        )
    return rounds


def paired_ceiling_ratio(results: list[dict[str, Any]], workload: str = "read") -> float:
    """The median of ``workload``'s paired rounds' ratios; NaN when the run made none (or none complete)."""
    ratios = [r["ratio"] for r in paired_rounds(results, workload) if not math.isnan(r["ratio"])]
    return statistics.median(ratios) if ratios else math.nan


def workload_ratio(results: list[dict[str, Any]], workload: str) -> float:
    """Gateway ÷ bare served rps of ``workload`` at c=32: the paired median when measured, else the table's.

    The table's gateway and bare points are measured minutes apart, so a change in the machine's other
    load between them moves the ratio; the paired rounds measure the two back to back, several times.
    """
    paired = paired_ceiling_ratio(results, workload)
    return paired if not math.isnan(paired) else ceiling_ratios(results, workload, 32)["gw_bare"]


def ceiling_ratio(results: list[dict[str, Any]]) -> float:
    """The run's ceiling ratio: :func:`workload_ratio` of the read."""
    return workload_ratio(results, "read")


def paired_table(results: list[dict[str, Any]], workload: str = "read") -> list[str]:
    """``workload``'s paired rounds as a markdown table, with the medians; empty when there were none."""
    rounds = paired_rounds(results, workload)
    if not rounds:
        return []
    lines = [
        "| round | gateway rps | bare rps | gw/bare | gateway CPU µs/request | bare CPU µs/request "
        "| bare CPU ÷ gateway CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {int(r['round']) + 1} | {_fmt(r['gateway'], 0)} | {_fmt(r['bare'], 0)} | {_fmt(r['ratio'], 2)} "
        f"| {_fmt(r['gateway_cpu_us'], 0)} | {_fmt(r['bare_cpu_us'], 0)} | {_fmt(r['cpu_ratio'], 2)} |"
        for r in rounds
    ]
    cpu_ratios = [r["cpu_ratio"] for r in rounds if not math.isnan(r["cpu_ratio"])]
    cpu_median = statistics.median(cpu_ratios) if cpu_ratios else math.nan
    median = paired_ceiling_ratio(results, workload)
    lines.append(f"| median | | | {_fmt(median, 2)} | | | {_fmt(cpu_median, 2)} |")
    return lines


def _fmt(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def summary_line(results: list[dict[str, Any]], rss_mb: list[float]) -> str:
    """The line tools read.

    ``added_p50_ms`` at c=1, ``added_p99_ms`` at c=32, ``rps`` = gateway served reads/s at c=32, the largest
    worker RSS, ``ceiling_ratio`` = gateway reads/s ÷ bare pass-through reads/s at c=32, same run
    (the median of the paired rounds when the run made them, see :func:`ceiling_ratio`), and
    ``documents_search_ratio``: the same for the DocumentReference search (:func:`workload_ratio`).
    """
    gateway = served_rps(find(results, "read", "gateway", 32))
    return (
        f"bench: read added_p50_ms={_fmt(added(results, 'read', 1)['added_p50_ms'], 1)} "
        f"added_p99_ms={_fmt(added(results, 'read', 32)['added_p99_ms'], 1)} "
        f"rps={_fmt(gateway, 0)} rss_mb={max(rss_mb, default=0):.0f} "
        f"ceiling_ratio={_fmt(ceiling_ratio(results), 2)} "
        f"documents_search_ratio={_fmt(workload_ratio(results, 'documents_search'), 2)}"
    )


def target_lines(results: list[dict[str, Any]], rss_mb: list[float]) -> list[str]:
    """One line per target of the issue: ``bench: target <name> value=<figure> met|missed``.

    A figure that was not measured in this run (a subset of workloads) reads ``value=n/a not-measured``.
    """
    reads32 = served_rps(find(results, "read", "gateway", 32))
    reads128 = served_rps(find(results, "read", "gateway", 128))
    read128 = find(results, "read", "gateway", 128)
    checks: list[tuple[str, float, int, bool]] = [
        # (name, figure, decimals, higher is better)
        ("reads_c32>=1500", reads32, 0, True),
        ("added_p50_ms_c1<=2", added(results, "read", 1)["added_p50_ms"], 2, False),
        ("added_p99_ms_c32<=8", added(results, "read", 32)["added_p99_ms"], 2, False),
        ("ceiling_ratio_c32>=0.6", ceiling_ratio(results), 2, True),
        ("letters_list_c32>=1000", served_rps(find(results, "letters_list", "gateway", 32)), 0, True),
        ("letter_create_c32>=500", served_rps(find(results, "letter_create", "gateway", 32)), 0, True),
        ("rss_mb<=150", max(rss_mb) if rss_mb else math.nan, 0, False),
        ("reads_c128/reads_c32>=0.9", ratio(reads128, reads32), 2, True),
        ("read_p99_ms_c128<=1000", read128["p99_ms"] if read128 else math.nan, 1, False),
        (
            f"documents_search_ratio_c32>={DOCUMENTS_SEARCH_RATIO}",
            workload_ratio(results, "documents_search"),
            2,
            True,
        ),
    ]
    lines = []
    for name, figure, digits, higher in checks:
        bound = float(re.split(r"[<>]=", name)[1])
        if math.isnan(figure):
            verdict = "not-measured"
        else:
            verdict = "met" if (figure >= bound if higher else figure <= bound) else "missed"
        lines.append(f"bench: target {name} value={_fmt(figure, digits)} {verdict}")
    return lines


def workload_table(results: list[dict[str, Any]]) -> list[str]:
    """Per workload and concurrency: direct, gateway, bare and bare+DB figures and the ratios."""
    lines = [
        "| workload | c | direct rps | gateway rps | gw answered rps | bare rps | bare+DB rps | gw/bare "
        "| gw/bare+DB | direct p50 | gateway p50 | gateway p99 | added p50 | added p90 | added p99 "
        "| shed | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        direct = find(results, row["workload"], "direct", row["concurrency"])
        if row["target"] != "gateway" or direct is None:
            continue
        extra = added(results, row["workload"], row["concurrency"])
        ratios = ceiling_ratios(results, row["workload"], row["concurrency"])
        bare = served_rps(find(results, row["workload"], "bare", row["concurrency"]))
        bare_db = served_rps(find(results, row["workload"], "bare_db", row["concurrency"]))
        lines.append(
            f"| {row['workload']} | {row['concurrency']} | {served_rps(direct):.0f} | "
            f"{served_rps(row):.0f} | "
            f"{row['rps']:.0f} | {_fmt(bare, 0)} | {_fmt(bare_db, 0)} | {_fmt(ratios['gw_bare'], 2)} | "
            f"{_fmt(ratios['gw_bare_db'], 2)} | {direct['p50_ms']:.2f} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {extra['added_p50_ms']:.2f} | {extra['added_p90_ms']:.2f} | "
            f"{extra['added_p99_ms']:.2f} | {row.get('shed', 0)} | {row['errors']} |"
        )
    return lines


def client_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The read points of the client comparison (the bare pass-through with each client)."""
    return [
        row
        for row in results
        if row["workload"] == "read" and row["target"] in ("bare", "client") and row.get("client") in CLIENTS
    ]


def client_table(results: list[dict[str, Any]]) -> list[str]:
    """The client comparison: rps, p50, p99 per client and concurrency, and rps relative to aiohttp."""
    rows = client_rows(results)
    if not rows:
        return []
    lines = [
        "| client | c | rps | p50 ms | p99 ms | rps / aiohttp | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    # the concurrencies of the comparison proper (the bare points of the reference client cover more)
    concurrencies = sorted({row["concurrency"] for row in rows if row["target"] == "client"}) or sorted(
        {row["concurrency"] for row in rows}
    )
    for client in CLIENTS:
        for concurrency in concurrencies:
            row = next((r for r in rows if r["client"] == client and r["concurrency"] == concurrency), None)
            if row is None:
                continue
            reference = next(
                (r for r in rows if r["client"] == REFERENCE_CLIENT and r["concurrency"] == concurrency), None
            )
            relative = ratio(served_rps(row), served_rps(reference))
            lines.append(
                f"| {client} | {concurrency} | {served_rps(row):.0f} | {row['p50_ms']:.2f} | "
                f"{row['p99_ms']:.2f} | {_fmt(relative, 2)} | {row['errors']} |"
            )
    return lines


def markdown(results: list[dict[str, Any]], rss_mb: list[float], machine: dict[str, Any]) -> str:
    """``results.md``: the workload table, the client comparison, the letters-list scaling lines."""
    lines = [
        f"Benchmark of {machine['date']} on {machine['cores']} cores ({machine['cpu']}), "
        f"{machine['seconds_per_point']} s per point. Gateway worker RSS after the run: {rss_mb} MB"
        + (
            f"; bare pass-through ({machine['bare_client']}) worker RSS: {machine['bare_rss_mb']} MB."
            if machine.get("bare_rss_mb")
            else "."
        )
        + (
            f" Machine load average (1 min) before and after the run: {machine['load_average']}."
            if machine.get("load_average")
            else ""
        ),
        "",
        "rps = served (2xx) answers per second; gw answered rps also counts shed (503) and failed answers. "
        f"bare = the bare pass-through with {machine.get('bare_client', REFERENCE_CLIENT)}, bare+DB = the "
        "same plus one indexed SELECT and one INSERT per request; gw/bare and gw/bare+DB = gateway rps over "
        "theirs. Latencies in ms; added = gateway minus direct.",
        "",
        *workload_table(results),
    ]
    other_errors = [
        f"{row['target']}{'/' + row['client'] if row.get('client') else ''} "
        f"{row['workload']} c={row['concurrency']}: {row['errors']}"
        for row in results
        if row["target"] not in ("gateway", "gateway_paired", "open_gateway") and row.get("errors")
    ]
    if other_errors:
        lines += [
            "",
            "Errors outside the gateway (load generator, stub or baseline): " + "; ".join(other_errors),
        ]
    failed = [
        f"{row['target']}{'/' + row['client'] if row.get('client') else ''} "
        f"{row['workload']} c={row['concurrency']}"
        for row in results
        if row.get("failed")
    ]
    if failed:
        lines += ["", "Points without a single answer, or where wrk could not connect: " + "; ".join(failed)]
    for row in results:
        if row["workload"].startswith("letters_list_"):
            lines.append(
                f"\nLetters list, page of 10, c=32, patient with "
                f"{row['workload'].rsplit('_', 1)[1]} letters: "
                f"{served_rps(row):.0f} rps, p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms."
            )
    paired = paired_table(results)
    if paired:
        lines += [
            "",
            "Paired ceiling: the read at c=32 through the gateway and through the bare pass-through, "
            "alternating, both servers up, each round back to back (the order swapped every round). "
            "The median gw/bare is the run's ceiling_ratio. CPU µs/request = the server's worker CPU "
            "time during the point ÷ its answers: what one read costs each server, whatever else ran.",
            "",
            *paired,
        ]
    paired_documents = paired_table(results, "documents_search")
    if paired_documents:
        lines += [
            "",
            "Paired DocumentReference search (page of 10) at c=32, measured the same way; the median "
            f"gw/bare is the run's documents_search_ratio (target ≥ {DOCUMENTS_SEARCH_RATIO}).",
            "",
            *paired_documents,
        ]
    open_loop = open_loop_table(results)
    if open_loop:
        lines += [
            "",
            "Open loop: the read offered at a fixed rate (vegeta; each request is sent on schedule, whatever "
            "the answers before it did), so latency is measured below saturation, without the closed loop's "
            "queue. Latencies in ms.",
            "",
            *open_loop,
        ]
    comparison = client_table(results)
    if comparison:
        lines += [
            "",
            "Client comparison: the bare pass-through's Patient read with each upstream client.",
            "",
            *comparison,
        ]
    return "\n".join(lines) + "\n"


_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>.*?)(?::\d+)?\)$")


def _frame_function(frame: str) -> tuple[str, str]:
    """``("name (path)", package)`` of one py-spy frame ``name (path:line)``: line numbers dropped."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, frame
    path = match["path"]
    parts = path.split("/")
    if path.startswith("<"):
        package = re.split(r"[\s>]", path[1:], maxsplit=1)[0]
    elif parts[0] in ("gateway", "auth_db", "tests") and len(parts) > 1:
        package = "/".join(parts[:2]).removesuffix(".py")
    else:
        package = parts[0].removesuffix(".py")
    return f"{match['name']} ({path})", package


def profile_summary(collapsed: str, top: int = 25) -> str:
    """A text summary of py-spy's ``--format raw`` output (collapsed stacks: ``a;b;c count`` per line).

    Frames are grouped by function (line numbers dropped). Three lists, each with its share of all samples:
    own samples by package (of the frame on top of the stack; ``gateway/…`` by subpackage), own samples by
    function, and inclusive samples by function (anywhere in the stack, once per stack); ``top`` lines each.
    """
    own: Counter[str] = Counter()
    own_package: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_function(frame) for frame in stack.split(";")]
        total += count
        own[frames[-1][0]] += count
        own_package[frames[-1][1]] += count
        for function in {function for function, _ in frames}:
            inclusive[function] += count
    if total == 0:
        return "no samples\n"
    out = [f"{total} samples (all threads of one worker)"]
    for title, counter in (
        ("own time by package (frame on top of the stack)", own_package),
        ("own time by function", own),
        ("inclusive time by function (anywhere in the stack)", inclusive),
    ):
        out += ["", f"{title}:"]
        out += [f"{100 * n / total:6.1f}%  {name}" for name, n in counter.most_common(top)]
    return "\n".join(out) + "\n"


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

    workloads = sorted(
        {
            r["workload"]
            for r in results
            if r["target"] == "direct" and not r["workload"].startswith("letters_list_")
        }
    )
    if not workloads:
        return
    figure, axes = plt.subplots(1, len(workloads), figsize=(4 * len(workloads), 3.5), squeeze=False)
    styles = (("direct", "--"), ("gateway", "-"), ("bare", ":"), ("bare_db", "-."))
    for axis, workload in zip(axes[0], workloads, strict=True):
        for target, style in styles:
            rows = sorted(
                (r for r in results if r["workload"] == workload and r["target"] == target),
                key=lambda r: r["concurrency"],
            )
            if not rows:
                continue
            for percentile in ("p50", "p99"):
                axis.plot(
                    [r["concurrency"] for r in rows],
                    [r[f"{percentile}_ms"] for r in rows],
                    style,
                    marker="o",
                    label=f"{target} {percentile}",
                )
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_title(workload)
        axis.set_xlabel("concurrency")
        axis.set_ylabel("latency (ms)")
        axis.legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(out / "latency.png", dpi=110)
    plt.close(figure)

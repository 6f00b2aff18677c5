"""The benchmark's pure helpers: wrk output parsing, shed vs errors, ratios, targets, the summary line."""

from __future__ import annotations

import base64
import json
import math
from typing import Any

from gateway.openehr import aql
from tests.bench import stub
from tests.bench.baseline import document_bundle
from tests.bench.report import (
    STATUS_COUNTER_LUA,
    added,
    ceiling_ratios,
    client_table,
    lua_script,
    markdown,
    open_loop_table,
    paired_ceiling_ratio,
    paired_rounds,
    parse_statuses,
    parse_vegeta,
    parse_wrk,
    profile_summary,
    summary_line,
    target_lines,
    to_ms,
    workload_ratio,
    workload_table,
)
from tests.bench.run import baseline_plan, point_count, profiled, uvicorn_command

WRK_OUTPUT = """Running 3s test @ http://127.0.0.1:18090/patients/bench-small
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.10ms    1.01ms  30.12ms   90.00%
    Req/Sec     7.80k   500.00     8.50k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.50ms
     90%    2.75ms
     99%    1.20s
  46800 requests in 3.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  15600.12
Transfer/sec:     13.33MB
"""

# The same run with the status counter of the bench's Lua script: 4,000 of the answers are the gateway
# shedding load (503 problem JSON), two are 503 without problem JSON, one a 500.
WRK_OUTPUT_WITH_STATUSES = """Running 3s test @ http://127.0.0.1:18090/patients/bench-small
  2 threads and 128 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    20.10ms   10.01ms 900.12ms   90.00%
    Req/Sec     7.80k   500.00     8.50k    70.00%
  Latency Distribution
     50%   12.00ms
     75%   21.50ms
     90%   42.75ms
     99%  310.20ms
  20000 requests in 2.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4003
Requests/sec:  10000.00
Transfer/sec:     13.33MB
bench-status: 200=15997 500=1 503=2 shed=4000
"""


def point(workload: str, target: str, concurrency: int, **values: Any) -> dict[str, Any]:
    row = {
        "workload": workload,
        "target": target,
        "concurrency": concurrency,
        "rps": 0.0,
        "p50_ms": 0.0,
        "p90_ms": 0.0,
        "p99_ms": 0.0,
        "shed": 0,
        "errors": 0,
    }
    row.update(values)
    row.setdefault("served_rps", row["rps"])
    return row


def run_results() -> list[dict[str, Any]]:
    """A small run: read at c=1, 32, 128 (direct, gateway, bare, bare+DB), letters at c=32."""
    return [
        point("read", "direct", 1, rps=7000, p50_ms=0.10, p90_ms=0.2, p99_ms=0.5),
        point("read", "gateway", 1, rps=600, p50_ms=1.6, p90_ms=2.0, p99_ms=3.1),
        point("read", "direct", 32, rps=40000, p50_ms=0.5, p90_ms=1.0, p99_ms=2.0),
        point("read", "gateway", 32, rps=1700.0, served_rps=1620.4, p50_ms=1.9, p90_ms=4.0, p99_ms=8.0),
        point("read", "direct", 128, rps=41000, p50_ms=2.0, p90_ms=3.0, p99_ms=5.0),
        point("read", "gateway", 128, rps=1700, served_rps=1500, p50_ms=60, p99_ms=900.0, shed=600, errors=0),
        point("read", "bare", 1, client="aiohttp", rps=1800, p50_ms=0.5, p99_ms=1.0),
        point("read", "bare", 32, client="aiohttp", rps=2500.0, p50_ms=7.0, p99_ms=30.0),
        point("read", "bare", 128, client="aiohttp", rps=2400, p50_ms=50, p99_ms=90),
        point("read", "bare_db", 32, client="aiohttp", rps=2000.0, p50_ms=9.0, p99_ms=40.0),
        point("read", "client", 32, client="httpx", rps=625.0, p50_ms=40.0, p99_ms=300.0),
        point("letters_list", "gateway", 32, rps=900),
        point("letter_create", "gateway", 32, rps=650),
    ]


def test_units() -> None:
    assert to_ms("812.00", "us") == 0.812
    assert to_ms("1.5", "s") == 1500.0


def test_parse_wrk_without_status_counter_counts_every_non2xx_as_error() -> None:
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed == {
        "rps": 15600.12,
        "served_rps": round(15600.12 * 46796 / 46800, 2),
        "requests": 46800,
        "served": 46796,
        "shed": 0,
        "errors": 7,
        "statuses": {},
        "p50_ms": 0.812,
        "p90_ms": 2.75,
        "p99_ms": 1200.0,
        "max_ms": 30.12,
    }


def test_parse_wrk_separates_shed_from_errors() -> None:
    parsed = parse_wrk(WRK_OUTPUT_WITH_STATUSES)
    assert parsed["statuses"] == {"200": 15997, "500": 1, "503": 2, "shed": 4000}
    assert parsed["shed"] == 4000
    # three socket errors, the 500 and the two 503 answers that are not problem JSON
    assert parsed["errors"] == 6
    assert parsed["served"] == 15997
    # served rps: every answer per second minus the shed (and failed) share
    assert parsed["served_rps"] == round(10000.0 * 15997 / 20000, 2)
    assert parsed["rps"] == 10000.0
    assert parsed["max_ms"] == 900.12


def test_status_line_parsing() -> None:
    assert parse_statuses("noise\nbench-status: 200=10 shed=2\n") == {"200": 10, "shed": 2}
    assert parse_statuses("bench-status: \n") == {}
    assert parse_statuses("no line") is None


def test_lua_script_sets_request_and_counts_statuses() -> None:
    script = lua_script("POST", {"a": 1}, {"Authorization": "Bearer t"})
    assert script.startswith('wrk.method = "POST"\nwrk.body = "{\\"a\\": 1}"\n')
    assert 'wrk.headers["Authorization"] = "Bearer t"' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert script.endswith(STATUS_COUNTER_LUA)
    for hook in ("function setup(thread)", "function response(status, headers, body)", "function done("):
        assert hook in STATUS_COUNTER_LUA
    assert '"problem+json", 1, true' in STATUS_COUNTER_LUA
    assert 'io.write("bench-status: "' in STATUS_COUNTER_LUA


def test_added_latency() -> None:
    results = run_results()
    assert added(results, "read", 32) == {"added_p50_ms": 1.4, "added_p90_ms": 3.0, "added_p99_ms": 6.0}
    assert all(math.isnan(v) for v in added(results, "search", 32).values())


def test_ceiling_ratios_use_served_rps() -> None:
    ratios = ceiling_ratios(run_results(), "read", 32)
    assert ratios["gw_bare"] == 1620.4 / 2500.0
    assert ratios["gw_bare_db"] == 1620.4 / 2000.0
    assert math.isnan(ceiling_ratios(run_results(), "read", 1)["gw_bare_db"])  # bare+DB not measured


def test_summary_line() -> None:
    assert summary_line(run_results(), [110.2, 120.4]) == (
        "bench: read added_p50_ms=1.5 added_p99_ms=6.0 rps=1620 rss_mb=120 ceiling_ratio=0.65 "
        "documents_search_ratio=n/a"
    )


def test_summary_line_of_a_partial_run() -> None:
    results = [point("read", "direct", 32, rps=100), point("read", "gateway", 32, rps=50)]
    assert summary_line(results, []) == (
        "bench: read added_p50_ms=n/a added_p99_ms=0.0 rps=50 rss_mb=0 ceiling_ratio=n/a "
        "documents_search_ratio=n/a"
    )


def paired(number: int, gateway: float, bare: float) -> list[dict[str, Any]]:
    return [
        point("read", "gateway_paired", 32, rps=gateway, round=number, errors=1, cpu_us_per_request=800.0),
        point("read", "bare_paired", 32, rps=bare, round=number, cpu_us_per_request=400.0),
    ]


def test_the_paired_rounds_give_the_ceiling_ratio_as_their_median() -> None:
    rounds = [*paired(0, 2000, 4000), *paired(1, 1500, 2000), *paired(2, 2100, 3500)]
    results = run_results() + rounds
    assert [r["ratio"] for r in paired_rounds(results)] == [0.5, 0.75, 0.6]
    assert paired_ceiling_ratio(results) == 0.6
    # the summary and the target read the paired median, not the table's unpaired 0.65
    assert "ceiling_ratio=0.60 " in summary_line(results, [100.0])
    assert "bench: target ceiling_ratio_c32>=0.6 value=0.60 met" in target_lines(results, [100.0])
    report = markdown(results, [100.0], {"date": "d", "cores": 2, "cpu": "c", "seconds_per_point": 3})
    assert "| 2 | 1500 | 2000 | 0.75 | 800 | 400 | 0.50 |" in report
    assert "| median | | | 0.60 | | | 0.50 |" in report
    assert "gateway_paired" not in report  # its errors are the gateway's, not "outside the gateway"


def test_a_paired_round_missing_its_bare_point_is_left_out_of_the_median() -> None:
    results = [*paired(0, 2000, 4000), point("read", "gateway_paired", 32, rps=1900, round=1)]
    assert math.isnan(paired_rounds(results)[1]["ratio"])
    assert paired_ceiling_ratio(results) == 0.5
    assert math.isnan(paired_ceiling_ratio(run_results()))  # a run without rounds


def test_target_lines() -> None:
    assert target_lines(run_results(), [110.2, 151.0]) == [
        "bench: target reads_c32>=1500 value=1620 met",
        "bench: target added_p50_ms_c1<=2 value=1.50 met",
        "bench: target added_p99_ms_c32<=8 value=6.00 met",
        "bench: target ceiling_ratio_c32>=0.6 value=0.65 met",
        "bench: target letters_list_c32>=1000 value=900 missed",
        "bench: target letter_create_c32>=500 value=650 met",
        "bench: target rss_mb<=150 value=151 missed",
        "bench: target reads_c128/reads_c32>=0.9 value=0.93 met",
        "bench: target read_p99_ms_c128<=1000 value=900.0 met",
        "bench: target documents_search_ratio_c32>=0.5 value=n/a not-measured",
    ]


def test_documents_search_ratio_is_the_paired_median_else_the_table_ratio() -> None:
    table = [
        point("documents_search", "direct", 32, rps=9000),
        point("documents_search", "gateway", 32, rps=900),
        point("documents_search", "bare", 32, client="aiohttp", rps=2000),
    ]
    assert workload_ratio(table, "documents_search") == 0.45
    assert summary_line(table, []).endswith("documents_search_ratio=0.45")
    assert "bench: target documents_search_ratio_c32>=0.5 value=0.45 missed" in target_lines(table, [])
    rounds = [
        point("documents_search", "gateway_paired", 32, rps=gateway, round=number)
        for number, gateway in enumerate((1100, 1000, 1300))
    ] + [point("documents_search", "bare_paired", 32, rps=2000, round=number) for number in range(3)]
    results = table + rounds + paired(0, 2000, 4000)  # the read's rounds stay apart
    assert [r["ratio"] for r in paired_rounds(results, "documents_search")] == [0.55, 0.5, 0.65]
    assert paired_ceiling_ratio(results) == 0.5  # the read's
    assert workload_ratio(results, "documents_search") == 0.55
    assert "bench: target documents_search_ratio_c32>=0.5 value=0.55 met" in target_lines(results, [])
    report = markdown(results, [100.0], {"date": "d", "cores": 2, "cpu": "c", "seconds_per_point": 3})
    assert "Paired DocumentReference search" in report
    assert "| 3 | 1300 | 2000 | 0.65 |" in report
    assert "| documents_search | 32 | 9000 | 900 | 900 | 2000 | n/a | 0.45 |" in report


def test_profiled_workloads() -> None:
    assert profiled(["read", "documents_search"], ["1"]) == ["read"]
    assert profiled(["documents_search", "search"], ["1"]) == ["documents_search"]
    assert profiled(["read", "documents_search"], ["documents_search"]) == ["documents_search"]
    assert profiled(["read"], ["documents_search"]) == []
    assert profiled(["read"], []) == []


def test_target_lines_say_what_was_not_measured() -> None:
    lines = target_lines([point("read", "gateway", 32, rps=100)], [])
    assert lines[0] == "bench: target reads_c32>=1500 value=100 missed"
    assert lines[4] == "bench: target letters_list_c32>=1000 value=n/a not-measured"
    assert lines[6] == "bench: target rss_mb<=150 value=n/a not-measured"


def test_workload_table_has_ceiling_columns_and_shed() -> None:
    table = workload_table(run_results())
    assert table[0].startswith("| workload | c | direct rps | gateway rps | gw answered rps | bare rps |")
    assert "| shed | errors |" in table[0]
    row32 = next(line for line in table if line.startswith("| read | 32 |"))
    assert row32.startswith("| read | 32 | 40000 | 1620 | 1700 | 2500 | 2000 | 0.65 | 0.81 |")
    row128 = next(line for line in table if line.startswith("| read | 128 |"))
    assert "| 2400 | n/a | 0.62 | n/a |" in row128
    assert row128.endswith("| 600 | 0 |")


def test_client_table_compares_with_aiohttp() -> None:
    table = client_table(run_results())
    assert "| httpx | 32 | 625 | 40.00 | 300.00 | 0.25 | 0 |" in table
    assert "| aiohttp | 32 | 2500 | 7.00 | 30.00 | 1.00 | 0 |" in table
    assert not any(line.startswith(("| aiohttp | 1 |", "| aiohttp | 128 |")) for line in table)
    assert len(table) == 4  # header, rule, httpx and aiohttp at c=32: the concurrency the comparison ran at
    bare_only = [row for row in run_results() if row["target"] != "client"]
    assert "| aiohttp | 1 | 1800 | 0.50 | 1.00 | 1.00 | 0 |" in client_table(bare_only)
    assert client_table([point("read", "gateway", 32, rps=1)]) == []


def test_markdown_lists_errors_outside_the_gateway() -> None:
    results = [
        *run_results(),
        point("read", "bare_db", 1, client="aiohttp", rps=10, errors=3),
        point("letters_list_10", "gateway", 32, failed=True),
    ]
    machine = {
        "date": "2026-12-01",
        "cores": 2,
        "cpu": "x",
        "seconds_per_point": 3,
        "bare_client": "aiohttp",
        "load_average": [0.5, 1.9],
    }
    text = markdown(results, [100.0], machine)
    assert "load average (1 min) before and after the run: [0.5, 1.9]." in text
    assert "bare_db/aiohttp read c=1: 3" in text
    assert "without a single answer, or where wrk could not connect: gateway letters_list_10 c=32" in text
    assert "Client comparison" in text


def test_profile_summary_groups_by_function_and_package() -> None:
    collapsed = (
        "main (a.py:1);handle (gateway/api/patients.py:2);query (psycopg/cursor.py:3) 4\n"
        "main (a.py:1);handle (gateway/api/patients.py:9);query (psycopg/cursor.py:5) 2\n"
        "main (a.py:1);handle (gateway/api/patients.py:2) 1\n"
        "main (a.py:1);commit (<sqlalchemy generated _go() wrapper>:2) 1\n"
        "bad line\n"
    )
    text = profile_summary(collapsed, top=3)
    assert text.startswith("8 samples")
    by_package, by_function, inclusive = text.split("\n\n")[1:]
    assert by_package.splitlines()[1:] == ["  75.0%  psycopg", "  12.5%  gateway/api", "  12.5%  sqlalchemy"]
    assert by_function.splitlines()[1] == "  75.0%  query (psycopg/cursor.py)"
    assert inclusive.splitlines()[1:3] == [
        " 100.0%  main (a.py)",
        "  87.5%  handle (gateway/api/patients.py)",
    ]
    assert profile_summary("") == "no samples\n"


def test_gateway_and_baselines_share_uvicorn_settings() -> None:
    gateway = uvicorn_command("gateway.main:create_app", 18090, 2)
    baseline = uvicorn_command("tests.bench.baseline:create_app", 18090, 2)
    assert gateway[4:] == baseline[4:]
    assert "18092" in uvicorn_command("tests.bench.baseline:create_app", 18092, 2)
    assert [gateway[3], baseline[3]] == ["gateway.main:create_app", "tests.bench.baseline:create_app"]
    for flags in (["--loop", "uvloop"], ["--http", "httptools"], ["--workers", "2"]):
        assert any(gateway[i : i + 2] == flags for i in range(len(gateway)))
    assert "--no-access-log" in gateway
    assert "--factory" in gateway


def test_baseline_plan() -> None:
    plan = baseline_plan(["read", "search"], [1, 8, 32, 128], ["httpx", "aiohttp", "pyreqwest"])
    assert [(step["target"], step["client"], step["db"]) for step in plan] == [
        ("bare", "aiohttp", False),
        ("bare_db", "aiohttp", True),
        ("client", "httpx", False),
        ("client", "pyreqwest", False),
    ]
    assert plan[0]["concurrency"] == [1, 8, 32, 128]
    assert plan[1]["workloads"] == ["read", "search"]
    assert plan[2] == {
        "target": "client",
        "client": "httpx",
        "db": False,
        "workloads": ["read"],
        "concurrency": [1, 32, 128],
    }
    assert len(baseline_plan(["search"], [1, 32], ["httpx"])) == 2  # no read, no client comparison


def test_default_run_fits_the_time_budget() -> None:
    workloads = ["read", "search", "letter_create", "letters_list", "documents_search"]
    clients = ["httpx", "httpx-aiohttp", "aiohttp", "pyreqwest"]
    points = point_count(workloads, [1, 8, 32, 128], clients)
    # gateway and direct, paired rounds (read and documents), bare, bare+DB, other clients
    assert points == 42 + 12 + 20 + 20 + 9
    assert points * 3 <= 6 * 60  # leaves ~2 min of the 8 for start-up, warm-up and wrk's own overhead


def test_stub_answers_like_hapi_and_ehrbase() -> None:
    status, headers, body = stub.respond("GET", f"/fhir/Patient/{stub.SMALL_PATIENT}", b"")
    assert status == 200
    assert (b"ETag", b'W/"1"') in headers
    assert json.loads(body)["resourceType"] == "Patient"
    request = json.dumps(
        {"q": "SELECT", "query_parameters": {"ehr_id": stub.LARGE_EHR}, "offset": 9990, "fetch": 20}
    )
    status, _, body = stub.respond("POST", "/ehrbase/rest/openehr/v1/query/aql", request.encode())
    result = json.loads(body)
    assert len(result["rows"]) == 10
    assert [c["name"] for c in result["columns"]] == ["uid", "title", "status", "author", "author_id", "date"]


def test_stub_answers_the_document_query_with_the_letters_text() -> None:
    request = aql.list_documents_request(
        ehr_id=stub.SMALL_EHR, template_id="t", date_from=None, date_to=None, offset=4, fetch=11
    )
    status, _, body = stub.respond("POST", "/ehrbase/rest/openehr/v1/query/aql", json.dumps(request).encode())
    result = json.loads(body)
    assert status == 200
    assert [c["name"] for c in result["columns"]][-1] == "body"
    summaries = aql.parse_summaries(result)  # the gateway's own parser
    assert len(summaries) == 6  # letters 4 to 9 of 10
    assert summaries[0].uid.startswith("00000004-")
    assert summaries[0].body is not None
    assert 1000 <= len(summaries[0].body.encode()) <= 2000
    assert "(letter 4)" in summaries[0].body


def test_bare_document_bundle_wraps_the_rows() -> None:
    request = aql.list_documents_request(
        ehr_id=stub.SMALL_EHR, template_id="t", date_from=None, date_to=None, offset=0, fetch=4
    )
    _, _, body = stub.respond("POST", "/ehrbase/rest/openehr/v1/query/aql", json.dumps(request).encode())
    bundle = document_bundle(json.loads(body), stub.SMALL_PATIENT, 3)
    assert bundle["type"] == "searchset"
    assert [link["relation"] for link in bundle["link"]] == ["self", "next"]  # the fourth row came back
    assert len(bundle["entry"]) == 3
    resource = bundle["entry"][0]["resource"]
    assert resource["resourceType"] == "DocumentReference"
    assert resource["subject"] == {"reference": f"Patient/{stub.SMALL_PATIENT}"}
    attachment = resource["content"][0]["attachment"]
    assert base64.b64decode(attachment["data"]).decode() == stub.document_row(0)[-1]
    assert attachment["size"] == len(stub.document_row(0)[-1].encode())


# vegeta report -type=json of a 5 s attack at 500/s (latencies in ns); two answers were 503.
VEGETA_REPORT = {
    "latencies": {
        "total": 1,
        "mean": 2500000,
        "50th": 2110000,
        "90th": 4000000,
        "95th": 6000000,
        "99th": 10380000,
        "max": 19900000,
        "min": 900000,
    },
    "requests": 2500,
    "rate": 500.2,
    "throughput": 499.6,
    "success": 0.9992,
    "status_codes": {"200": 2498, "503": 2},
}


def test_parse_vegeta() -> None:
    point = parse_vegeta(VEGETA_REPORT, 5)
    assert point["p50_ms"] == 2.11
    assert point["p99_ms"] == 10.38
    assert point["max_ms"] == 19.9
    assert point["served"] == 2498
    assert point["errors"] == 2
    assert point["served_rps"] == 499.6
    assert point["rps"] == 500.0


def test_open_loop_table_gives_what_the_gateway_adds_at_each_rate() -> None:
    def open_point(
        target: str, rate: int, p50: float, p99: float, cpu: float | None = None
    ) -> dict[str, Any]:
        values: dict[str, Any] = {"rate": rate, "p50_ms": p50, "p99_ms": p99, "max_ms": p99 * 2}
        if cpu is not None:
            values["cpu_us_per_request"] = cpu
        return point("read", target, 0, **values)

    results = [
        open_point("open_direct", 500, 0.2, 0.5),
        open_point("open_gateway", 500, 2.1, 10.4, cpu=1500.0),
        open_point("open_bare", 500, 0.9, 3.0, cpu=650.0),
        open_point("open_direct", 250, 0.4, 0.9),
        open_point("open_gateway", 250, 2.3, 4.8, cpu=1700.0),
    ]
    table = open_loop_table(results)
    assert table[2] == "| 250 | 0.40 / 0.90 | n/a | 2.30 / 4.80 | 9.6 | 1.90 / 3.90 | 1700 | n/a | 0 |"
    assert (
        table[3] == "| 500 | 0.20 / 0.50 | 0.90 / 3.00 | 2.10 / 10.40 | 20.8 | 1.90 / 9.90 | 1500 | 650 | 0 |"
    )
    assert open_loop_table(run_results()) == []

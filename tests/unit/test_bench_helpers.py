"""The benchmark's pure helpers: wrk output parsing, added latency, the summary line, stub payloads."""

from __future__ import annotations

import json

from tests.bench import stub
from tests.bench.report import added, parse_wrk, summary_line, to_ms

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


def test_units() -> None:
    assert to_ms("812.00", "us") == 0.812
    assert to_ms("1.5", "s") == 1500.0


def test_parse_wrk() -> None:
    parsed = parse_wrk(WRK_OUTPUT)
    assert parsed == {
        "rps": 15600.12,
        "requests": 46800,
        "p50_ms": 0.812,
        "p90_ms": 2.75,
        "p99_ms": 1200.0,
        "errors": 7,
    }


def test_added_latency_and_summary_line() -> None:
    results = [
        {
            "workload": "read",
            "target": "direct",
            "concurrency": 32,
            "rps": 40000,
            "p50_ms": 0.5,
            "p90_ms": 1.0,
            "p99_ms": 2.0,
            "errors": 0,
        },
        {
            "workload": "read",
            "target": "gateway",
            "concurrency": 32,
            "rps": 1620.4,
            "p50_ms": 1.9,
            "p90_ms": 4.0,
            "p99_ms": 8.0,
            "errors": 0,
        },
    ]
    assert added(results, "read", 32) == {"added_p50_ms": 1.4, "added_p90_ms": 3.0, "added_p99_ms": 6.0}
    assert (
        summary_line(results, [110.2, 120.4])
        == "bench: read added_p50_ms=1.4 added_p99_ms=6.0 rps=1620 rss_mb=120"
    )


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

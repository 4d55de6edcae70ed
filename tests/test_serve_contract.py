"""The HTTP service's contract is exact: the OpenAPI schema states the bounds the handlers enforce
and documents every status they answer, and a schema-driven fuzzer (the schemathesis CLI, from
outside, against the real server on loopback, on a tiny trained CoRA run) finds no server error,
no undocumented status, no wrong content type and no response that breaks its schema. Plus the
request limits (413 / 422) one by one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from cora.serve.app import MAX_BODY_BYTES, MAX_PAIRS, create_app
from cora.serve.server import serve_in_thread

FUZZ_PAIRS = 8  # a small --max-pairs keeps each fuzzed /score to one short forward pass
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_a_schema_driven_fuzzer_finds_nothing(rec, tmp_path):
    """schemathesis' coverage phase (boundaries of every bound: 0, n, n+1, missing and extra
    fields, wrong types) and fuzzing phase (50 examples per operation, valid and invalid bodies,
    raw bytes), seeded so a failure reproduces. (Its pytest plugin's lazy fixtures do not run
    under pytest 9, so it runs as the outside client it is.)"""
    app = create_app(rec, max_batch=8, max_wait_ms=1, queue_size=64, max_pairs=FUZZ_PAIRS)
    with serve_in_thread(app) as url:
        res = subprocess.run([sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json",
                              "--checks", CHECKS, "--mode", "all", "--phases", "coverage,fuzzing",
                              "--max-examples", "50", "--seed", "1", "--workers", "1",
                              "--generation-database", "none", "--request-timeout", "30",
                              "--no-color"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=240)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    assert "No issues found" in out and "4 selected" in out, out[-3000:]


# ----------------------------------------------------------------------------- the schema itself
@pytest.fixture(scope="module")
def client(rec):
    with TestClient(create_app(rec, max_batch=8, max_wait_ms=1, queue_size=16)) as c:
        yield c


def _schema(client, name):
    return client.get("/openapi.json").json()["components"]["schemas"][name]


def test_schema_bounds_are_the_limits_and_ids_are_numbers_or_text(client, rec):
    pair = _schema(client, "Pair")["properties"]
    for field in ("user", "item"):  # the dataset's own ids: a JSON integer, or 1 to 256 characters
        assert [(b["type"], b.get("minLength"), b.get("maxLength")) for b in pair[field]["anyOf"]] == [
            ("integer", None, None), ("string", 1, 256)]
    pairs = _schema(client, "ScoreRequest")["properties"]["pairs"]
    assert (pairs["minItems"], pairs["maxItems"]) == (1, MAX_PAIRS)
    req = _schema(client, "RecommendRequest")["properties"]
    assert (req["k"]["minimum"], req["k"]["maximum"]) == (1, 100)
    assert (req["candidates"]["minimum"], req["candidates"]["maximum"]) == (1, 1000)
    assert req["internal_ids"] == {**req["internal_ids"], "type": "boolean", "default": False}
    assert client.get("/info").json()["limits"] == {"max_pairs": MAX_PAIRS, "max_k": 100, "max_candidates": 1000,
                                                   "max_body_bytes": MAX_BODY_BYTES, "request_timeout_s": 120.0}


def test_every_answered_status_is_documented(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/score"]["post"]["responses"]) == {"200", "404", "413", "415", "422", "503", "504"}
    assert set(paths["/recommend"]["post"]["responses"]) == {"200", "404", "413", "415", "422", "501", "503", "504"}
    assert set(paths["/health"]["get"]["responses"]) == {"200", "503"}
    assert set(paths["/info"]["get"]["responses"]) == {"200"}  # no API key set: nothing to refuse
    assert "1,048,576 bytes" in paths["/score"]["post"]["responses"]["413"]["description"]
    assert "120 s" in paths["/score"]["post"]["responses"]["504"]["description"]
    for code in ("404", "413", "415", "503", "504"):
        ref = paths["/score"]["post"]["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorMessage")


@pytest.mark.parametrize("body", [
    {"pairs": [{"user": 1.5, "item": 2}]},
    {"pairs": [{"user": True, "item": 2}]},
    {"pairs": [{"user": "", "item": 2}]},
    {"pairs": [{"user": 1, "item": None}]},
])
def test_ids_that_are_no_number_or_text_are_422(client, body):
    r = client.post("/score", json=body)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "pairs", 0]


# ----------------------------------------------------------------------------- limits
def test_too_many_pairs_is_422_naming_the_limit(rec):
    with TestClient(create_app(rec, max_pairs=3)) as c:
        ok = c.post("/score", json={"pairs": [{"user": 1, "item": 2}] * 3})
        assert ok.status_code == 200 and len(ok.json()["results"]) == 3
        r = c.post("/score", json={"pairs": [{"user": 1, "item": 2}] * 4})
        assert r.status_code == 422
        (err,) = r.json()["detail"]
        assert err["type"] == "too_long" and "at most 3 items" in err["msg"]


def test_a_body_over_the_byte_limit_is_413_json(rec):
    pairs = {"pairs": [{"user": 1, "item": 2}] * 5}
    size = len(json.dumps(pairs).encode())
    with TestClient(create_app(rec, max_body_bytes=size)) as c:
        json_type = {"content-type": "application/json"}
        assert c.post("/score", content=json.dumps(pairs), headers=json_type).status_code == 200
        big = json.dumps({"pairs": [{"user": 1, "item": 2}] * 6})
        r = c.post("/score", content=big, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.headers["content-type"] == "application/json"
        assert r.json()["detail"] == f"request body of {len(big):,} bytes exceeds the limit of {size:,} bytes"

        def chunks():  # no Content-Length: the cap is on the bytes read
            for _ in range(4):
                yield b" " * (size // 2)

        r = c.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and f"limit of {size:,} bytes" in r.json()["detail"]
        assert c.get("/health").status_code == 200  # a GET has no body to limit


@pytest.mark.parametrize("body", [
    b'{"pairs": "\x80"}',  # not UTF-8: FastAPI's own answer would be an undocumented 400
    b"[" * 100_000 + b"]" * 100_000,  # nested past the recursion limit: also a 400 from FastAPI
    b"{not json",
])
def test_unparsable_bodies_are_documented_422s(client, body):
    r = client.post("/score", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    (err,) = r.json()["detail"]
    assert err["type"] == "json_invalid" and err["loc"][0] == "body" and err["msg"]


def test_health_is_503_once_shutting_down(rec):
    app = create_app(rec)
    with TestClient(app) as c:
        assert c.get("/health").json() == {"status": "ok", "queued": 0, "queue_size": 256}
        app.state.batcher.close()
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "shutting down"
        r = c.post("/score", json={"pairs": [{"user": 1, "item": 2}]})
        assert r.status_code == 503 and "shutting down" in r.json()["detail"] and r.headers["retry-after"] == "1"


@pytest.mark.parametrize("flags, needle", [
    (["--max-pairs", "0"], "--max-pairs = 0: must be an integer >= 1"),
    (["--max-body-bytes", "0"], "--max-body-bytes = 0: must be an integer >= 1"),
    (["--shutdown-grace", "-1"], "--shutdown-grace = -1.0: must be a number >= 0"),
])
def test_bad_limit_flags_are_one_line_errors_before_the_model_loads(run, monkeypatch, capsys, flags, needle):
    import cora.serve.recommend
    import cora.serve.server
    from cora import cli

    def refuse(*a, **k):
        raise AssertionError("the flag was not refused")

    monkeypatch.setattr(cora.serve.server, "serve", refuse)  # a wrongly accepted flag must not block on a server
    monkeypatch.setattr(cora.serve.recommend.Recommender, "from_run", refuse)
    monkeypatch.setattr(sys, "argv", ["cora", "serve", str(run), *flags])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert e.value.code == 1 and len(lines) == 1 and needle in lines[0], err

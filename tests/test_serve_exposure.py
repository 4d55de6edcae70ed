"""A service you can put on a network (on a tiny trained CoRA run): the optional API key (401 / 200,
/health and the API description open), a POST that is not JSON (415), the compute bound (candidates
and pairs per request: 422 naming the limit; a request past --request-timeout: 504 in time, and the
model is free again), /info without filesystem paths unless asked, and `cora serve`'s checks and
warnings before the model loads. Every statement of docs/serving.md's "Exposing the service"."""

from __future__ import annotations

import hmac
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient

from cora.errors import CoraError
from cora.serve.app import create_app
from cora.serve.gates import API_KEY_ENV, OPEN_PATHS, read_api_key
from cora.serve.server import exposure_warning, serve_in_thread

from helpers import main_in_process

KEY = "k3y-" + "x" * 28
BODY = {"pairs": [{"user": 1, "item": 2}]}


@pytest.fixture(scope="module")
def guarded(rec):
    with TestClient(create_app(rec, max_batch=8, max_wait_ms=1, api_key=KEY)) as c:
        yield c


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# ----------------------------------------------------------------------------- the API key
@pytest.mark.parametrize("headers, detail", [
    ({}, "missing API key: send the header 'Authorization: Bearer <key>'"),
    ({"Authorization": f"Basic {KEY}"}, "missing API key: send the header 'Authorization: Bearer <key>'"),
    ({"Authorization": "Bearer"}, "missing API key: send the header 'Authorization: Bearer <key>'"),
    (_bearer(KEY[:-1]), "wrong API key"),
    (_bearer(KEY + "x"), "wrong API key"),
])
def test_without_the_key_or_with_another_every_endpoint_is_401(guarded, headers, detail):
    for method, path, body in (("post", "/score", BODY), ("post", "/recommend", {"user": 1}), ("get", "/info", None)):
        r = getattr(guarded, method)(path, headers=headers, **({"json": body} if body else {}))
        assert r.status_code == 401 and r.json() == {"detail": detail}, (path, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_with_the_key_everything_answers(guarded, rec):
    for scheme in ("Bearer", "bearer"):
        r = guarded.post("/score", json=BODY, headers={"Authorization": f"{scheme} {KEY}"})
        assert r.status_code == 200 and r.json()["results"][0]["probability"] == pytest.approx(
            float(rec.score_pairs([(1, 2)])[0]), abs=1e-6)
    assert guarded.post("/recommend", json={"user": 1, "k": 2, "candidates": 4}, headers=_bearer(KEY)).status_code == 200
    info = guarded.get("/info", headers=_bearer(KEY)).json()
    assert info["auth"] is True and KEY not in json.dumps(info)


def test_health_and_the_api_description_stay_open(guarded):
    assert OPEN_PATHS == {"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"}
    assert guarded.get("/health").json() == {"status": "ok", "queued": 0, "queue_size": 256}
    assert guarded.get("/docs").status_code == 200
    spec = guarded.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http", "scheme": "bearer", "description": "The service's API key"}
    for path, method in (("/score", "post"), ("/recommend", "post"), ("/info", "get")):
        assert spec["paths"][path][method]["security"] == [{"HTTPBearer": []}]
        assert "401" in spec["paths"][path][method]["responses"]
    assert "security" not in spec["paths"]["/health"]["get"]


def test_the_key_is_checked_before_the_body(guarded):
    """Without the key nothing is parsed (401, not 422); the byte cap still comes first (413)."""
    r = guarded.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 401
    r = guarded.post("/score", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_the_key_is_compared_in_constant_time(guarded, monkeypatch):
    import cora.serve.gates

    calls, compare = [], hmac.compare_digest

    def recording(a, b):
        calls.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(cora.serve.gates.hmac, "compare_digest", recording)
    assert guarded.get("/info", headers=_bearer("short")).status_code == 401
    assert guarded.get("/info", headers=_bearer(KEY)).status_code == 200
    assert calls == [(32, 32), (32, 32)]  # SHA-256 digests: a wrong key's length does not show either


def test_the_key_over_real_http(rec):
    """What a client behind a reverse proxy sends: the same header over a socket."""
    with serve_in_thread(create_app(rec, max_batch=8, max_wait_ms=1, api_key=KEY)) as url:
        assert httpx.post(f"{url}/score", json=BODY, timeout=60).status_code == 401
        assert httpx.post(f"{url}/score", json=BODY, headers=_bearer(KEY), timeout=60).status_code == 200
        assert httpx.get(f"{url}/health", timeout=60).status_code == 200


def test_without_a_key_the_service_is_open(rec):
    with TestClient(create_app(rec, max_batch=8, max_wait_ms=1)) as c:
        assert c.post("/score", json=BODY).status_code == 200 and c.get("/info").json()["auth"] is False
        assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})


@pytest.mark.parametrize("file_text, env, expect", [
    (f"{KEY}\n", {}, (KEY, "--api-key-file {file}")),  # the file's trailing newline is not part of the key
    (None, {API_KEY_ENV: f" {KEY} "}, (KEY, f"${API_KEY_ENV}")),
    (f"{KEY}\n", {API_KEY_ENV: "other-key-that-is-long-enough"}, (KEY, "--api-key-file {file}")),  # the file wins
    (None, {API_KEY_ENV: ""}, (None, "none")),
    (None, {}, (None, "none")),
])
def test_where_the_key_comes_from(tmp_path, file_text, env, expect):
    file = tmp_path / "key"
    if file_text is not None:
        file.write_text(file_text)
    key, source = read_api_key(file if file_text is not None else None, environ=env)
    assert (key, source) == (expect[0], expect[1].format(file=file))


@pytest.mark.parametrize("file_text, env, needle", [
    ("secret\n", {}, "{file}: the API key has 6 characters; use at least 16"),
    (None, {API_KEY_ENV: "secret"}, f"${API_KEY_ENV}: the API key has 6 characters; use at least 16"),
    ("two words here and more\n", {}, "must be printable ASCII without spaces"),
    ("", {}, "the API key has 0 characters"),
    ("schlüssel-und-noch-mehr\n", {}, "must be printable ASCII without spaces"),
])
def test_an_unusable_key_is_one_line(tmp_path, file_text, env, needle):
    file = tmp_path / "key"
    if file_text is not None:
        file.write_text(file_text)
    with pytest.raises(CoraError) as e:
        read_api_key(file if file_text is not None else None, environ=env)
    assert needle.format(file=f"--api-key-file {file}") in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- content type
@pytest.mark.parametrize("headers, content, got", [
    ({"content-type": "text/plain"}, json.dumps(BODY), "'text/plain'"),
    ({"content-type": "application/x-www-form-urlencoded"}, json.dumps(BODY), "'application/x-www-form-urlencoded'"),
    ({}, json.dumps(BODY), "none"),
])
def test_a_post_that_is_not_json_is_415(rec, headers, content, got):
    with TestClient(create_app(rec, max_batch=8, max_wait_ms=1)) as c:
        for path in ("/score", "/recommend"):
            r = c.post(path, content=content, headers=headers)
            assert r.status_code == 415 and r.json() == {
                "detail": f"Content-Type must be application/json (got {got}); "
                          "with curl: -H 'content-type: application/json'"}
        ok = c.post("/score", content=json.dumps(BODY), headers={"content-type": "application/json; charset=utf-8"})
        assert ok.status_code == 200


# ----------------------------------------------------------------------------- compute bound
def test_candidates_and_pairs_per_request_are_bounded_by_the_server(rec):
    with TestClient(create_app(rec, max_batch=8, max_wait_ms=1, max_pairs=3, max_candidates=5)) as c:
        assert c.post("/recommend", json={"user": 1, "k": 2, "candidates": 5}).status_code == 200
        r = c.post("/recommend", json={"user": 1, "k": 2, "candidates": 6})
        (err,) = r.json()["detail"]
        assert r.status_code == 422 and err["loc"] == ["body", "candidates"]
        assert err["msg"] == "Input should be less than or equal to 5"
        r = c.post("/score", json={"pairs": BODY["pairs"] * 4})
        assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "List should have at most 3 items after validation, not 4"
        spec = c.get("/openapi.json").json()["components"]["schemas"]
        assert spec["RecommendRequest"]["properties"]["candidates"]["maximum"] == 5
        assert spec["ScoreRequest"]["properties"]["pairs"]["maxItems"] == 3
        assert c.get("/info").json()["limits"] | {} == {"max_pairs": 3, "max_k": 100, "max_candidates": 5,
                                                      "max_body_bytes": 1 << 20, "request_timeout_s": 120.0}


def test_a_request_past_the_timeout_is_504_in_time_and_frees_the_model(rec):
    """40 pairs at --max-batch 2 are 20 forward passes of 0.25 s here (5 s); with a 1 s limit the
    client has its 504 after ~1 s, the request stops after the pass that was running, and the next
    request is scored at once."""
    passes, forward = [], rec.method.forward

    def slow(batch):
        passes.append(time.monotonic())
        time.sleep(0.25)
        return forward(batch)

    app = create_app(rec, max_batch=2, max_wait_ms=0, request_timeout_s=1.0)
    pairs = [{"user": 1 + j % 12, "item": 1 + j % 30} for j in range(40)]
    rec.method.forward = slow
    try:
        with TestClient(app) as c:
            t0 = time.monotonic()
            r = c.post("/score", json={"pairs": pairs})
            answered = time.monotonic() - t0
            assert r.status_code == 504 and r.json() == {"detail": "not scored within 1 s (the server's "
                                                                   "--request-timeout); the request was dropped: ask "
                                                                   "for fewer pairs or candidates"}
            assert answered < 2.5, answered
            time.sleep(1.0)  # long enough for four more passes, had the request kept the model
            stopped_at = len(passes)
            assert stopped_at <= 1.0 / 0.25 + 2, stopped_at  # the passes until the deadline, plus the one running
            t1 = time.monotonic()
            assert c.post("/score", json=BODY).status_code == 200
            assert time.monotonic() - t1 < 2.5 and len(passes) == stopped_at + 1
            assert app.state.batcher.stats["timed_out"] == 1
    finally:
        del rec.method.forward


def test_a_request_waiting_in_the_queue_past_the_timeout_is_504(rec):
    """The time limit counts from arrival: a request stuck behind a long one is answered too."""
    gate, entered = threading.Event(), threading.Event()
    app = create_app(rec, max_batch=1, max_wait_ms=0, request_timeout_s=0.5)
    score = app.state.batcher.score_fn

    def blocked(pairs, keep_going):
        entered.set()
        gate.wait(30)
        return score(pairs, keep_going)

    calls = []
    app.state.batcher.score_fn = lambda pairs, keep_going: calls.append(pairs) or blocked(pairs, keep_going)
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(c.post, "/score", json=BODY)
            assert entered.wait(30)
            t0 = time.monotonic()
            second = c.post("/score", json=BODY)
            assert second.status_code == 504 and time.monotonic() - t0 < 2.0
        finally:
            gate.set()
        assert first.result().status_code == 504  # it also passed 0.5 s while the model was held
        time.sleep(0.5)
        assert len(calls) == 1  # the second request, dropped while queued, never reached the model


# ----------------------------------------------------------------------------- /info
def test_info_shows_no_paths_unless_asked(rec, run):
    with TestClient(create_app(rec, max_batch=8, max_wait_ms=1)) as c:
        text = c.get("/info").text
        info = json.loads(text)
    assert info["run"] == run.name and info["backbone"] == "backbone-llama"
    assert str(run.parent) not in text and "/" not in info["run"] + info["backbone"]
    with TestClient(create_app(rec, max_batch=8, max_wait_ms=1, show_paths=True)) as c:
        info = c.get("/info").json()
    assert info["run"] == str(run) and info["backbone"] == rec.cfg.backbone


# ----------------------------------------------------------------------------- cora serve
def test_serve_listens_on_loopback_by_default():
    import typer

    from cora import cli

    serve = typer.main.get_command(cli.app).commands["serve"]
    assert next(p for p in serve.params if p.name == "host").default == "127.0.0.1"


@pytest.mark.parametrize("host, key, warned", [
    ("0.0.0.0", None, True), ("::", None, True), ("my-host.example", None, True),
    ("0.0.0.0", KEY, False), ("127.0.0.1", None, False), ("localhost", None, False), ("::1", None, False),
])
def test_a_service_open_to_the_network_without_a_key_is_warned_about(host, key, warned):
    line = exposure_warning(host, key)
    assert (line is not None) == warned
    if warned:
        assert line.startswith(f"serving on {host} without an API key") and "\n" not in line


@pytest.fixture()
def stop_before_loading(monkeypatch):
    """`cora serve` stops where the model would load: what it said and checked until then is tested."""
    import cora.serve.preflight

    def stop(*a, **k):
        raise CoraError("stopped before loading")

    monkeypatch.setattr(cora.serve.preflight.RunData, "recommender", stop)
    monkeypatch.delenv(API_KEY_ENV, raising=False)


@pytest.mark.parametrize("flags, env, lines", [
    (["--host", "0.0.0.0"], {}, ["warning: serving on 0.0.0.0 without an API key: anyone who can reach the port "
                                 "can use the model", "error: stopped before loading"]),
    (["--host", "0.0.0.0"], {API_KEY_ENV: KEY}, [f"API key from ${API_KEY_ENV}: requests need 'Authorization: "
                                                  "Bearer <key>'", "error: stopped before loading"]),
    (["--api-key-file", "{t}/missing"], {}, ["error: --api-key-file {t}/missing: cannot read the key"]),
    (["--request-timeout", "0"], {}, ["error: --request-timeout = 0.0: must be a number > 0 (seconds)"]),
    (["--max-candidates", "0"], {}, ["error: --max-candidates = 0: must be an integer >= 1"]),
    (["--api-key-file", "{t}/short"], {}, ["error: --api-key-file {t}/short: the API key has 6 characters; "
                                           "use at least 16"]),
])
def test_serve_checks_and_warns_before_the_model_loads(run, tmp_path, monkeypatch, capsys, stop_before_loading,
                                                       flags, env, lines):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "short").write_text("secret\n")
    code, out, err = main_in_process(monkeypatch, capsys, "serve", run, *[f.format(t=tmp_path) for f in flags],
                                     columns=300)
    got = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and len(got) == len(lines), err
    for line, expected in zip(got, lines):
        assert line.startswith(expected.format(t=tmp_path)), (line, expected)

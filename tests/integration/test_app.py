from __future__ import annotations

from fastapi.testclient import TestClient

from curaway.api.app import create_app


def _client(make_settings, database_url, **kw):
    settings = make_settings(database_url=database_url, **kw)
    return TestClient(create_app(settings), raise_server_exceptions=False)


def test_healthz_and_readyz(make_settings, database_url):
    with _client(make_settings, database_url) as client:
        assert client.get("/healthz").json()["status"] == "ok"
        ready = client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"]["database"]["status"] == "ok"


def test_readyz_reports_an_unreachable_database(make_settings, tmp_path):
    settings = make_settings(database_url="postgresql://nobody@127.0.0.1:1/nothing")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"]["status"] == "unreachable"
    assert "nobody" not in ready.text


def test_request_id_is_echoed_or_minted(make_settings, database_url):
    with _client(make_settings, database_url) as client:
        assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"
        minted = client.get("/healthz", headers={"X-Request-ID": "bad id\n"}).headers["x-request-id"]
        assert minted and minted != "bad id\n"


def test_uniform_error_shape_for_unknown_routes(make_settings, database_url):
    with _client(make_settings, database_url) as client:
        response = client.get("/nope", headers={"X-Request-ID": "rid-1"})
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "Not Found", "request_id": "rid-1"}}


def test_body_cap_answers_413_before_reading(make_settings, database_url):
    with _client(make_settings, database_url, max_body_bytes=1024) as client:
        response = client.post("/healthz", content=b"x" * 4096)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_metrics_exposed(make_settings, database_url):
    with _client(make_settings, database_url) as client:
        response = client.get("/metrics")
    assert response.status_code == 200
    assert "curaway_task_runs" in response.text

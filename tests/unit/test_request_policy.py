"""The request policy (http_front/request_policy.py) through the app: Host, Origin, media type and CORS, in front
of a real broker client, broker and fake worker in-process. Each refusal is answered from the error table, is
counted, and sends nothing to the workers."""

from __future__ import annotations

import re
from collections.abc import Iterator

import falcon.testing
import pytest

from http_front import request_policy as policy
from http_front.app import Limits, create_app
from http_front.request_policy import JSON, PDF, Access
from http_front.routes import TABLE
from tests.unit.inproc import InprocCluster, eventually

PORT = 8421
PAGE = "http://127.0.0.1:5173"  # a local web UI let in by --allowed-origins
KEY = "policy-test-key"
BODY = {"texts": ["a b c"]}
JSON_ROUTES = sorted(route.path for route in TABLE if route.accepts == "json")  # a new JSON route is covered


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, falcon.testing.TestClient]]:
    """One cluster with one fake worker; an app as a loopback front starts by default, one with --allowed-hosts
    and --allowed-origins, and one with an API key too."""
    cluster = InprocCluster()
    try:
        cluster.add_worker()
        loopback = Access.of("127.0.0.1", None, None)
        opened = Access.of("127.0.0.1", ("embed.box",), (PAGE,))
        made = {"loopback": create_app(cluster.client, Limits(), access=loopback),
                "opened": create_app(cluster.client, Limits(), access=opened),
                "keyed": create_app(cluster.client, Limits(), access=opened, api_key=KEY)}
        clients = {name: falcon.testing.TestClient(app, headers={"Host": f"127.0.0.1:{PORT}"})
                   for name, app in made.items()}
        headers = {"Authorization": f"Bearer {KEY}"}
        for client in clients.values():
            eventually(lambda c=client: c.simulate_get("/health", headers=headers).status_code == 200,
                       "the app sees the worker")
        yield clients
    finally:
        cluster.close()


def code(result: falcon.testing.Result) -> str | None:
    error = (result.json or {}).get("error") if result.content else None
    return error.get("code") if isinstance(error, dict) else None


def counter(client: falcon.testing.Result, line: str) -> float:
    """A sample of the app's /metrics: the sum of the lines that start with ``line`` (0 when there is none)."""
    text = client.simulate_get("/metrics").text
    return sum(float(m) for m in re.findall(rf"^{re.escape(line)}\S* (\S+)$", text, re.M))


def texts_sent(client: falcon.testing.TestClient) -> float:
    return counter(client, "embed_texts_total")


# -- the rules alone ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "name"), [
    ("localhost:8421", "localhost"), ("127.0.0.1", "127.0.0.1"), ("[::1]:8421", "[::1]"), ("[::1]", "[::1]"),
    ("LocalHost:1", "localhost"), ("attacker.example:8421", "attacker.example"), ("::1", "::1"),
    ("localhost:", "localhost:"), ("localhost.:8421", "localhost."),
])
def test_the_name_of_a_host_header(header: str, name: str) -> None:
    assert policy.host_name(header) == name


def test_which_hosts_are_answered() -> None:
    hosts, loopback = policy.allowed_hosts, policy.LOOPBACK_HOSTS
    assert hosts("127.0.0.1", None) == hosts("::1", ()) == hosts("localhost", None) == loopback
    assert hosts("127.0.0.1", ("box.lan",)) == loopback | {"box.lan"}
    assert hosts("0.0.0.0", None) is None  # the API key guards a LAN bind
    assert hosts("0.0.0.0", ("box.lan",)) == loopback | {"box.lan"}  # unless names are given
    assert hosts("127.0.0.1", ("*",)) is None


def test_which_media_types_a_route_takes() -> None:
    assert policy.media_type("Application/JSON; charset=utf-8") == JSON and policy.media_type(None) == ""
    assert policy.takes(JSON, JSON) and policy.takes(JSON, "application/vnd.api+json") and policy.takes(PDF, PDF)
    for given in ("", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "text/x+json",
                  PDF):
        assert not policy.takes(JSON, given), given
    assert not policy.takes(PDF, JSON)


# -- Host ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/embed", "/info", "/status.json", "/health", "/v1/models", "/nowhere"])
def test_a_rebinding_host_is_refused_on_every_path(apps: dict[str, falcon.testing.TestClient], path: str) -> None:
    client = apps["loopback"]
    before = texts_sent(client), counter(client, 'embed_http_requests_total{code="HOST_NOT_ALLOWED"')
    for method in ("GET", "POST"):
        r = client.simulate_request(method, path, json=BODY, headers={"Host": f"attacker.example:{PORT}"})
        assert (r.status_code, code(r)) == (403, "HOST_NOT_ALLOWED"), (method, r.text)
    assert texts_sent(client) == before[0]
    assert counter(client, 'embed_http_requests_total{code="HOST_NOT_ALLOWED"') == before[1] + 2


@pytest.mark.parametrize("host", [f"localhost:{PORT}", f"127.0.0.1:{PORT}", f"[::1]:{PORT}", "localhost",
                                  "LOCALHOST:9"])
def test_the_loopback_names_are_served(apps: dict[str, falcon.testing.TestClient], host: str) -> None:
    r = apps["loopback"].simulate_post("/embed", json=BODY, headers={"Host": host})
    assert r.status_code == 200 and len(r.json["vectors"]) == 1


def test_allowed_hosts_adds_names(apps: dict[str, falcon.testing.TestClient]) -> None:
    assert apps["opened"].simulate_post("/embed", json=BODY, headers={"Host": "embed.box:80"}).status_code == 200
    assert code(apps["loopback"].simulate_post("/embed", json=BODY, headers={"Host": "embed.box"})) \
        == "HOST_NOT_ALLOWED"
    assert code(apps["opened"].simulate_post("/embed", json=BODY, headers={"Host": "other.box"})) \
        == "HOST_NOT_ALLOWED"


# -- Origin and CORS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ["https://attacker.example", "http://localhost:3000", "null",
                                    f"http://127.0.0.1:{PORT + 1}"])
def test_a_foreign_origin_is_refused_before_any_work(apps: dict[str, falcon.testing.TestClient],
                                                      origin: str) -> None:
    client = apps["loopback"]
    before = texts_sent(client)
    r = client.simulate_post("/embed", json=BODY, headers={"Origin": origin})
    assert (r.status_code, code(r)) == (403, "ORIGIN_NOT_ALLOWED")
    assert "Access-Control-Allow-Origin" not in r.headers  # the page cannot read even the refusal
    preflight = client.simulate_options("/embed", headers={"Origin": origin, "Access-Control-Request-Method":
                                                           "POST", "Access-Control-Request-Headers": "content-type"})
    assert (preflight.status_code, code(preflight)) == (403, "ORIGIN_NOT_ALLOWED")
    assert not any(h.lower().startswith("access-control-allow") for h in preflight.headers)
    assert texts_sent(client) == before


def test_the_fronts_own_pages_are_let_in(apps: dict[str, falcon.testing.TestClient]) -> None:
    """The status page's origin is the front's own: what its script's requests carry as Origin."""
    for host in (f"127.0.0.1:{PORT}", f"localhost:{PORT}", f"[::1]:{PORT}"):
        r = apps["loopback"].simulate_get("/status.json", headers={"Host": host, "Origin": f"http://{host}"})
        assert r.status_code == 200, (host, r.text)


def test_an_allowed_origin_gets_cors(apps: dict[str, falcon.testing.TestClient]) -> None:
    client = apps["keyed"]
    preflight = client.simulate_options("/embed", headers={
        "Origin": PAGE, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
        "Access-Control-Request-Private-Network": "true"})  # no key: browsers send none with a preflight
    assert preflight.status_code == 204
    h = preflight.headers
    assert h["Access-Control-Allow-Origin"] == PAGE and h["Access-Control-Allow-Methods"] == "POST"
    assert {"authorization", "content-type"} <= {x.strip().lower() for x in
                                                 h["Access-Control-Allow-Headers"].split(",")}
    assert h["Access-Control-Max-Age"] == str(policy.CORS_MAX_AGE)
    assert h["Access-Control-Allow-Private-Network"] == "true"
    assert "origin" in h["Vary"].lower()
    models = client.simulate_options("/v1/models/x", headers={"Origin": PAGE, "Access-Control-Request-Method": "GET"})
    assert models.headers["Access-Control-Allow-Methods"] == "GET"  # the route's own methods
    answered = client.simulate_post("/embed", json=BODY, headers={"Origin": PAGE, "Authorization": f"Bearer {KEY}"})
    assert answered.status_code == 200 and len(answered.json["vectors"]) == 1
    assert answered.headers["Access-Control-Allow-Origin"] == PAGE
    assert "x-request-id" in answered.headers["Access-Control-Expose-Headers"].lower()
    for refused, expected in ((client.simulate_post("/embed", json=BODY, headers={"Origin": PAGE}), "UNAUTHORIZED"),
                              (client.simulate_post("/embed", body="{}", headers={
                                  "Origin": PAGE, "Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"}),
                               "UNSUPPORTED_MEDIA_TYPE")):
        assert code(refused) == expected and refused.headers["Access-Control-Allow-Origin"] == PAGE  # readable


def test_the_key_does_not_let_a_foreign_origin_in(apps: dict[str, falcon.testing.TestClient]) -> None:
    r = apps["keyed"].simulate_post("/embed", json=BODY, headers={"Origin": "https://attacker.example",
                                                                 "Authorization": f"Bearer {KEY}"})
    assert code(r) == "ORIGIN_NOT_ALLOWED"


# -- media type ---------------------------------------------------------------------------------------------


def test_the_json_routes_are_those_of_the_route_table() -> None:
    assert {"/embed", "/embed/chunks", "/v1/embeddings"} <= set(JSON_ROUTES)


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", PDF])
def test_a_json_route_refuses_another_body(apps: dict[str, falcon.testing.TestClient], path: str,
                                           content_type: str | None) -> None:
    client = apps["loopback"]
    before = texts_sent(client)
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.simulate_post(path, body='{"texts": ["a"], "input": "a", "model": "fake-model"}', headers=headers)
    assert (r.status_code, code(r)) == (415, "UNSUPPORTED_MEDIA_TYPE"), r.text
    assert JSON in r.json["error"]["message"]
    assert texts_sent(client) == before


@pytest.mark.parametrize("path", JSON_ROUTES)
@pytest.mark.parametrize("content_type", [JSON, "application/json; charset=utf-8", "application/vnd.embed+json"])
def test_a_json_route_takes_json(apps: dict[str, falcon.testing.TestClient], path: str, content_type: str) -> None:
    """The route reads the body (an empty object: each route says what it lacks, or answers)."""
    r = apps["loopback"].simulate_post(path, body="{}", headers={"Content-Type": content_type})
    assert r.status_code == 200 or code(r) == "BAD_REQUEST", r.text


def test_the_pdf_route_takes_only_pdf(apps: dict[str, falcon.testing.TestClient]) -> None:
    r = apps["loopback"].simulate_post("/embed/pdf", json=BODY)
    assert (r.status_code, code(r)) == (415, "UNSUPPORTED_MEDIA_TYPE") and PDF in r.json["error"]["message"]


# -- the status page's key ----------------------------------------------------------------------------------


def test_the_status_page_keeps_its_key_form_to_itself(apps: dict[str, falcon.testing.TestClient]) -> None:
    """Never framed by another page (which could overlay the key form), a form that submits nowhere (the key
    never goes into a URL), no referrer; and every answer says it is what its Content-Type says."""
    page = apps["keyed"].simulate_get("/status")
    assert page.status_code == 200
    csp = {d.strip().split(" ", 1)[0]: d.strip() for d in page.headers["Content-Security-Policy"].split(";")}
    assert csp["frame-ancestors"] == "frame-ancestors 'none'" and csp["form-action"] == "form-action 'none'"
    assert csp["default-src"] == "default-src 'none'" and csp["script-src"] == "script-src 'self'"
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Referrer-Policy"] == "no-referrer"
    assert 'type="password"' in page.text and 'autocomplete="off"' in page.text
    for path in ("/status", "/status.json", "/embed", "/nowhere"):
        assert apps["keyed"].simulate_get(path).headers["X-Content-Type-Options"] == "nosniff", path

"""The route table (http_front/routes.py) and what is derived from it: the app's routes and methods, the API
key's open routes, the server's probe paths, the status page's counting, the request's row before routing, and
the OpenAPI operations. No model, no process: the app is built over a client that never connects."""

from __future__ import annotations

import typing
from collections.abc import Iterator

import falcon
import falcon.inspect
import falcon.testing
import pytest
from falcon.routing import CompiledRouter

from http_front import routes
from http_front.app import create_app
from http_front.broker_client import BrokerClient
from http_front.openapi import Doc, json_answer, openapi_path
from http_front.routes import COUNTING, PROBE_PATHS, ROUTES, TABLE, Route, find

KEY = "routes-test-key"


@pytest.fixture(scope="module")
def app() -> Iterator[falcon.App]:
    client = BrokerClient("inproc://no-broker-here")  # never started: the app only needs its broker_status()
    yield create_app(client, api_key=KEY)


def test_one_row_per_path_with_known_column_values() -> None:
    assert len(ROUTES) == len(TABLE)
    for column, kind in (("auth", routes.Auth), ("threads", routes.Threads), ("counted", routes.Counted),
                         ("accepts", routes.Accepts)):
        assert {getattr(route, column) for route in TABLE} <= set(typing.get_args(kind)), column


def test_the_app_serves_each_row_with_its_methods(app: falcon.App) -> None:
    served = {info.path: {m.method for m in info.methods if not m.internal}
              for info in falcon.inspect.inspect_routes(app)}
    assert served == {route.path: set(route.methods) for route in TABLE}


def test_probes_are_fixed_paths_and_bodiless() -> None:
    """The server matches probe paths before routing, on the raw path: no templates there; and it hands them
    GET and HEAD only."""
    probes = [route for route in TABLE if route.threads == "probe"]
    assert {route.path for route in probes} == PROBE_PATHS
    assert all("{" not in route.path and route.methods == ("GET",) and route.accepts == "none" for route in probes)


# what the five places that decided routes before the table (app.py, auth.OPEN_PATHS, server.PROBE_PATHS,
# status_page.WORK_ROUTES/UNCOUNTED_ROUTES, openapi.py) said of each route: (auth, threads, counted, accepts)
BEFORE_THE_TABLE = {
    "/health": ("key", "probe", "rates", "none"), "/info": ("key", "work", "rates", "none"),
    "/embed": ("key", "work", "latency", "json"), "/v1/embeddings": ("key", "work", "latency", "json"),
    "/v1/models": ("key", "work", "rates", "none"), "/v1/models/{model:path}": ("key", "work", "rates", "none"),
    "/metrics": ("key", "probe", "rates", "none"), "/livez": ("open", "probe", "rates", "none"),
    "/readyz": ("open", "probe", "rates", "none"), "/openapi.json": ("open", "work", "rates", "none"),
    "/embed/pdf": ("key", "work", "latency", "pdf"), "/embed/chunks": ("key", "work", "latency", "json"),
    "/status": ("open", "work", "no", "none"), "/status/assets/{name}": ("open", "work", "no", "none"),
    "/status.json": ("key", "probe", "no", "none"),
}


def test_the_routes_keep_the_rules_they_had_before_the_table() -> None:
    assert {path: (ROUTES[path].auth, ROUTES[path].threads, ROUTES[path].counted, ROUTES[path].accepts)
            for path in BEFORE_THE_TABLE} == BEFORE_THE_TABLE
    assert {path for path in BEFORE_THE_TABLE if BEFORE_THE_TABLE[path][1] == "probe"} <= PROBE_PATHS
    assert {path for path in BEFORE_THE_TABLE if BEFORE_THE_TABLE[path][2] == "latency"} <= COUNTING.latency
    assert {path for path in BEFORE_THE_TABLE if BEFORE_THE_TABLE[path][2] == "no"} <= COUNTING.uncounted


def test_a_request_finds_its_row_before_routing(app: falcon.App) -> None:
    router = CompiledRouter()
    for route in TABLE:
        router.add_route(route.path, route.resource)  # any object with responders does: the classes will
    assert find(router, "/embed") is ROUTES["/embed"]
    assert find(router, "/v1/models/sentence-transformers/all-MiniLM-L6-v2") is ROUTES["/v1/models/{model:path}"]
    assert find(router, "/status/assets/status.js") is ROUTES["/status/assets/{name}"]
    assert find(router, "/status/assets/../app.py") is ROUTES["/status/assets/{name}"]  # under its fixed part
    assert find(router, "/no/such/route") is None


def test_the_key_check_reads_the_row(app: falcon.App) -> None:
    client = falcon.testing.TestClient(app)
    for route in TABLE:
        path = route.path.replace("{model:path}", "a/b").replace("{name}", "status.js")
        r = client.simulate_request(route.methods[0], path)
        assert (r.status_code == 401) is (route.auth == "key"), (route.path, r.status_code)
    assert client.simulate_get("/no/such/route").status_code == 401


def test_the_spec_is_the_table(app: falcon.App) -> None:
    spec = falcon.testing.TestClient(app).simulate_get("/openapi.json").json
    assert set(spec["paths"]) == {openapi_path(route.path) for route in TABLE}
    for route in TABLE:
        item = spec["paths"][openapi_path(route.path)]
        assert set(item) - {"parameters"} == {method.lower() for method in route.methods}
        for method in route.methods:
            operation = item[method.lower()]
            assert operation["summary"] == route.doc.summary
            assert ("401" in operation["responses"]) is (route.auth == "key"), route.path
            assert (operation.get("security") == []) is (route.auth == "open"), route.path
            body = operation.get("requestBody", {}).get("content", {})
            assert list(body) == {"json": ["application/json"], "pdf": ["application/pdf"], "none": []}[
                route.accepts], route.path
            errors = "#/components/schemas/" + ("OpenAIError" if route.path.startswith("/v1/") else "Error")
            statuses = {*route.doc.errors, *([401] if route.auth == "key" else []), 403,  # the request policy's
                        *([415] if route.accepts != "none" else [])}
            assert {status: operation["responses"][str(status)]["content"]["application/json"]["schema"]
                    for status in statuses} == {status: {"$ref": errors} for status in statuses}, route.path


def test_a_row_is_all_it_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A route added as one row is served, documented and treated by its columns."""

    class Echo:
        def __init__(self, state: object) -> None:
            pass

        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            resp.media = {"echo": req.params.get("x")}

    row = Route("/echo", ("GET",), Echo, auth="open", threads="work", counted="no", accepts="none",
                doc=Doc("echo x", {200: json_answer({"type": "object"}, "x")}))
    monkeypatch.setattr(routes, "TABLE", (*TABLE, row))
    monkeypatch.setitem(routes.ROUTES, row.path, row)
    client = falcon.testing.TestClient(create_app(BrokerClient("inproc://no-broker-here"), api_key=KEY))
    assert client.simulate_get("/echo", params={"x": "1"}).json == {"echo": "1"}  # open: no key
    assert client.simulate_get("/openapi.json").json["paths"]["/echo"]["get"]["summary"] == "echo x"


def test_the_readme_table_has_a_line_per_route_and_method() -> None:
    lines = routes.markdown_table().splitlines()[2:]
    assert len(lines) == sum(len(route.methods) for route in TABLE)
    for line, (route, method) in zip(lines, [(r, m) for r in TABLE for m in r.methods], strict=True):
        assert line.startswith(f"| `{method} {openapi_path(route.path)}` |") and route.doc.summary in line

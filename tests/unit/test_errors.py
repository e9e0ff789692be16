"""The one error table (embed_common/errors.py): every code our code raises is in it, an unknown one is caught
where it is made, and the README's table is a true copy of it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import falcon
import falcon.testing
import pytest

from embed_common.errors import ERRORS, TABLE, ErrorCode, UnknownErrorCode, code_for_status
from http_front.errors import ApiError, install
from tests.unit.source_tree import walked

ROOT = Path(__file__).resolve().parents[2]


def test_an_unknown_code_raises_where_the_error_is_made() -> None:
    with pytest.raises(UnknownErrorCode, match="OVERLOADEDD"):
        ApiError("OVERLOADEDD", "a typo")


def test_a_peers_unknown_code_is_internal_not_a_crash() -> None:
    error = ApiError.from_peer("SOMETHING_NEW", "from a newer worker")
    assert (error.code, error.status) == ("INTERNAL", 500)
    assert ApiError.from_peer("OVERLOADED", "queue full").status == 503


def test_a_route_that_raises_an_unknown_code_answers_internal_and_logs_it(caplog: pytest.LogCaptureFixture) -> None:
    class Typo:
        def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
            raise ApiError("NO_WORKER", "typo")

    app = falcon.App()
    install(app)
    app.add_route("/typo", Typo())
    result = falcon.testing.TestClient(app).simulate_get("/typo")
    assert result.status_code == 500 and result.json["error"]["code"] == "INTERNAL"
    assert any("NO_WORKER" in r.getMessage() or (r.exc_info and "NO_WORKER" in str(r.exc_info[1]))
               for r in caplog.records)


def raised_codes() -> list[tuple[str, str]]:
    """(where, code) for every ApiError(...) and ErrorCode.X written in our packages."""
    found = []
    for package in ("broker", "worker", "http_front", "embed_common", "supervisor", "embed_client"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in walked(path):
                where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
                if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
                        == "ApiError" and node.args and isinstance(node.args[0], ast.Constant)):
                    found.append((where, node.args[0].value))
                elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                      and node.value.id == "ErrorCode"):
                    found.append((where, node.attr))
    return found


def test_every_code_written_in_the_source_is_in_the_table() -> None:
    found = raised_codes()
    assert len(found) > 30  # the scan sees them
    assert [(where, code) for where, code in found if code not in ERRORS] == []


def test_the_enum_is_the_table() -> None:
    assert [c.value for c in ErrorCode] == [s.code for s in TABLE]
    assert ErrorCode.OVERLOADED == "OVERLOADED"
    assert len(ERRORS) == len(TABLE)


def test_bare_http_statuses_get_one_code_each() -> None:
    generic = [s.status for s in TABLE if s.generic]
    assert len(generic) == len(set(generic))
    assert code_for_status(404) == "NOT_FOUND" and code_for_status(431) == "BAD_REQUEST"
    assert code_for_status(502) == "INTERNAL"


def test_the_readme_table_is_the_error_table() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Errors", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| (\d+) \| (\d*) \| (.*) \|$", section, re.M)
    expected = [(s.code, str(s.status), "" if s.retry_after is None else str(s.retry_after), s.description)
                for s in TABLE]
    assert rows == expected

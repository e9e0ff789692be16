"""EmbedClient's retry and error rules against a real HTTP server that fails on purpose."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from embed_client import HTTP_ERROR, NETWORK_ERROR, PARSE_ERROR, TIMEOUT, EmbedClient, EmbedError
from tests.conftest import free_port


class Script:
    """What the server answers: a list of (status, body, headers, delay) consumed per /embed request."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, Any, dict[str, str], float]] = []
        self.requests: list[dict[str, Any]] = []
        self.max_texts = 1000


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/info":
                self.reply(200, {"limits": {"max_texts": script.max_texts, "max_body_bytes": 4096}})
            else:
                self.reply(503, {"status": "starting", "workers": []})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            script.requests.append(body)
            if script.replies:
                status, reply, headers, delay = script.replies.pop(0)
                time.sleep(delay)
                self.reply(status, reply, headers)
            elif self.path == "/rerank":  # a text's score: its length; best first
                order = sorted(range(len(body["texts"])), key=lambda i: -len(body["texts"][i]))
                self.reply(200, [{"index": i, "score": float(len(body["texts"][i]))} for i in order])
            elif self.path == "/tokenize":  # a text's count: its length; over 40: truncated
                counts = [len(t) for t in body["texts"]]
                self.reply(200, {"model": "m", "max_tokens": 40, "counts": counts,
                                 "truncated": [i for i, c in enumerate(counts) if c > 40]})
            else:
                self.reply(200, {"vectors": [[float(len(t)), 0.0] for t in body["texts"]]})

    class Server(ThreadingHTTPServer):
        def handle_error(self, request: Any, client_address: Any) -> None:
            # a delayed reply to a client that timed out meets a closed socket after its test: printing that
            # traceback (Python 3.11 parses its source for the carets) races a later test's ast.parse
            pass

    httpd = Server(("127.0.0.1", 0), Handler)
    # shutdown() waits for serve_forever's next look at its flag: a short poll keeps every teardown short
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()


def client(url: str, **kw: Any) -> EmbedClient:
    return EmbedClient(url, retry_delay=kw.pop("retry_delay", 0.01), **kw)


def test_5xx_is_retried_then_succeeds(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(503, {"error": {"code": "OVERLOADED", "message": "full"}}, {}, 0),
                      (500, {"error": {"code": "INTERNAL", "message": "x"}}, {}, 0)]
    assert client(url).embed(["abc"]) == [[3.0, 0.0]]
    assert len(script.requests) == 3


def test_5xx_gives_up_after_retry_attempts(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(503, {"error": {"code": "NO_WORKERS", "message": "none"}}, {}, 0)] * 5
    with pytest.raises(EmbedError) as caught:
        client(url, retry_attempts=2).embed(["abc"])
    assert caught.value.kind == HTTP_ERROR and caught.value.status == 503 and caught.value.code == "NO_WORKERS"
    assert len(script.requests) == 3


def test_4xx_is_never_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(400, {"error": {"code": "BAD_REQUEST", "message": "no"}}, {}, 0)]
    with pytest.raises(EmbedError) as caught:
        client(url).embed(["abc"])
    assert caught.value.kind == HTTP_ERROR and caught.value.code == "BAD_REQUEST" and not caught.value.retryable
    assert len(script.requests) == 1


def test_unparsable_response_is_a_parse_error(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(200, b"<html>not json", {}, 0)]
    with pytest.raises(EmbedError) as caught:
        client(url).embed(["abc"])
    assert caught.value.kind == PARSE_ERROR


def test_slow_server_is_a_timeout_and_retried(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies = [(200, {"vectors": [[1.0, 0.0]]}, {}, 0.5)]
    assert client(url, timeout=0.15).embed(["abc"]) == [[3.0, 0.0]]  # first try timed out, the retry answered
    script.replies = [(200, {"vectors": [[1.0, 0.0]]}, {}, 0.5)] * 3
    with pytest.raises(EmbedError) as caught:
        client(url, timeout=0.15, retry_attempts=0).embed(["abc"])
    assert caught.value.kind == TIMEOUT


def test_connection_refused_is_a_network_error() -> None:
    with pytest.raises(EmbedError) as caught:
        client(f"http://127.0.0.1:{free_port()}", retry_attempts=1).embed(["abc"])
    assert caught.value.kind == NETWORK_ERROR


def test_big_lists_are_split_within_limits_and_kept_in_order(server: tuple[str, Script]) -> None:
    url, script = server
    script.max_texts = 7
    texts = ["x" * (i % 50) for i in range(100)]
    vectors = client(url).embed(texts)
    assert [v[0] for v in vectors] == [float(len(t)) for t in texts]
    assert all(len(r["texts"]) <= 7 for r in script.requests)
    assert all(len(json.dumps(r)) <= 4096 for r in script.requests)
    assert sum(len(r["texts"]) for r in script.requests) == 100


def test_health_reports_503_bodies_and_check_health_is_false(server: tuple[str, Script]) -> None:
    url, _ = server
    assert client(url).health()["status"] == "starting"
    assert client(url).check_health() is False


def test_a_split_rerank_is_ranked_again_as_one(server: tuple[str, Script]) -> None:
    url, script = server
    script.max_texts = 7
    texts = ["x" * ((i * 37) % 50) for i in range(30)]
    ranked = client(url).rerank("q", texts, model="reranker", top_n=10)
    assert len(script.requests) == 5 and all(r["model"] == "reranker" for r in script.requests)
    expected = sorted(range(30), key=lambda i: (-len(texts[i]), i))[:10]
    assert [r["index"] for r in ranked] == expected
    assert [r["score"] for r in ranked] == [float(len(texts[i])) for i in expected]


def test_rerank_is_retried_as_embed_is(server: tuple[str, Script]) -> None:
    url, script = server
    script.replies.append((503, {"error": {"code": "NO_WORKERS", "message": "later"}}, {}, 0))
    assert [r["index"] for r in client(url).rerank("q", ["a", "bbb"])] == [1, 0]
    script.replies.append((404, {"error": {"code": "MODEL_NOT_FOUND", "message": "no"}}, {}, 0))
    with pytest.raises(EmbedError) as raised:
        client(url).rerank("q", ["a"], model="nope")
    assert raised.value.code == "MODEL_NOT_FOUND" and raised.value.status == 404


def test_tokenize_keeps_the_order_and_the_indices_of_a_split_list(server: tuple[str, Script]) -> None:
    url, script = server
    script.max_texts = 4
    texts = ["y" * (i * 5) for i in range(10)]
    answer = client(url).tokenize(texts, prompt_name="query")
    assert answer["counts"] == [len(t) for t in texts] and answer["max_tokens"] == 40
    assert answer["truncated"] == [i for i, t in enumerate(texts) if len(t) > 40]
    assert all(r["prompt_name"] == "query" for r in script.requests)


def test_embed_sends_the_model_and_prompt_options_given(server: tuple[str, Script]) -> None:
    url, script = server
    client(url).embed(["a"], model="e5", input_type="query")
    client(url).embed(["a"])
    assert script.requests[0] == {"texts": ["a"], "normalize": True, "model": "e5", "input_type": "query"}
    assert script.requests[1] == {"texts": ["a"], "normalize": True}  # the seed's request, unchanged

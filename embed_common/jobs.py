"""How a request becomes jobs: the one place for the job-size and split rules, read by the front (which cuts
requests into jobs) and the broker (whose smallest credit is one full job, broker/balancing.py).

A request is cut into runs of about equal estimated work, one per idle worker (:func:`spread_parts`,
:func:`spread_bounds`), and each run into jobs of at most :data:`JOB_TEXTS` texts, or fewer holding about
``job_chars`` characters when the work grows with the characters (chunked jobs) (:func:`job_starts`).
"""

from __future__ import annotations

import bisect
import itertools

JOB_TEXTS = 64  # most texts in one job


def job_starts(texts: list[str], job_chars: int | None = None, job_texts: int = JOB_TEXTS) -> list[int]:
    """Where each job of ``texts`` starts: at most ``job_texts`` texts a job, and at most about ``job_chars``
    characters when given (a job always holds at least one text)."""
    starts: list[int] = []
    count = chars = 0
    for i, text in enumerate(texts):
        if not starts or count == job_texts or (job_chars and chars + len(text) > job_chars):
            starts.append(i)
            count = chars = 0
        count += 1
        chars += len(text)
    return starts


def estimated_tokens(text: str, max_tokens: int) -> float:
    """About how many tokens ``text`` has once truncated: what encoding it costs, without the tokenizer.

    Subword tokenizers take ~4.2 characters of English (ASCII) text a token and ~1.6 of other scripts; long texts
    are cut at the model's limit anyway. tests/unit/test_spread.py checks that this follows the real tokenizer's
    counts more closely than plain characters do.
    """
    ascii_chars = len(text.encode("ascii", "ignore"))
    return min(float(max_tokens), 2.0 + ascii_chars / 4.2 + (len(text) - ascii_chars) / 1.6)


def spread_bounds(work: list[float], parts: int) -> list[int]:
    """Cut a request's texts into at most ``parts`` runs of about equal ``work``: [0, cut, ..., len(work)].

    Each cut lies where the running total comes nearest its share, so that no worker of a spread request waits
    long on another (the request is done when its last share is). Every run holds at least one text.
    """
    n = len(work)
    parts = max(1, min(parts, n))
    before = list(itertools.accumulate(work, initial=0.0))  # before[i]: the work of texts[:i]
    bounds = [0]
    for k in range(1, parts):
        target = before[n] * k / parts
        lo, hi = bounds[-1] + 1, n - (parts - k)  # leave a text for each run still to come
        i = min(max(bisect.bisect_left(before, target, lo, hi + 1), lo), hi)
        if i > lo and target - before[i - 1] < before[i] - target:
            i -= 1
        bounds.append(i)
    return [*bounds, n]


def spread_parts(workers: int, jobs_in_flight: int) -> int:
    """Over how many workers a new request is cut: those the front is not keeping busy already (at least one).

    A lone request is shared by every worker, since its answer comes when its last share is done; under load
    the workers are busy anyway, and cutting a request further would only multiply the head's work per job
    (``python -m bench.head`` measures that work).
    """
    return max(1, workers - jobs_in_flight)

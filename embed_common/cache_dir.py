"""Where embed-cluster keeps what it may lose: ``$XDG_CACHE_HOME/embed-cluster/<kind>`` (``~/.cache`` by default).

The worker keeps its ONNX exports, precision choices and model fingerprints there (worker/cache.py), the
front its vector cache (http_front/embed_cache.py).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(kind: str) -> Path:
    """The directory of one kind of entry: ``$XDG_CACHE_HOME/embed-cluster/<kind>``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "embed-cluster" / kind

"""Model-name rules and the models a cluster serves, the same in every part (the default: embed_common/settings.py).

A cluster serves one or more models, each with its own pool of workers. ``up --model`` (and the broker's
``--expect-model``) take them as one comma-separated list of ``[ALIAS=]ID_OR_PATH``; the first is the default
model, the one the seed's ``/embed`` uses. A request names a model by its alias, its id or its short name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def short_name(model_id: str) -> str:
    """The comparable name of a model id or local path (the seed's ``model``): its last path component."""
    return model_id.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class ModelSpec:
    """One model a cluster serves: ``alias`` names its pool (jobs, workers, routes), ``model`` is what its
    workers load (a hub id or a local path)."""

    alias: str
    model: str

    @property
    def name(self) -> str:
        return short_name(self.model)

    def __str__(self) -> str:
        return f"{self.alias}={self.model}"


def parse_models(raw: str) -> tuple[ModelSpec, ...]:
    """The models of a ``--model`` list, the default first; ValueError says what is wrong with it.

    An item without an alias is known by its short name. Two items may not share an alias or a model (a
    worker registers by its model's name: two pools of one model could not tell its workers apart).
    """
    specs: list[ModelSpec] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            raise ValueError(f"an empty model in {raw!r}")
        alias, sep, model = item.partition("=")
        if not sep:
            alias, model = short_name(item), item
        alias, model = alias.strip(), model.strip()
        if not model:
            raise ValueError(f"no model after {alias}=")
        if sep and not ALIAS.match(alias):
            raise ValueError(f"alias {alias!r}: letters, digits, '.', '_' and '-' (64 at most)")
        specs.append(ModelSpec(alias, model))
    for kind, key in (("alias", lambda s: s.alias), ("model", lambda s: s.name)):
        seen = [key(s) for s in specs]
        twice = sorted({k for k in seen if seen.count(k) > 1})
        if twice:
            raise ValueError(f"the {kind} {twice[0]!r} is given twice")
    return tuple(specs)


def model_list(raw: str) -> str:
    """The settings table's check of a ``--model`` list (kept as the text it was given)."""
    parse_models(raw)
    return raw

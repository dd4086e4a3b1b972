"""Random container names in Docker's ``adjective_surname`` style."""

from __future__ import annotations

import secrets
from collections.abc import Container

_ADJECTIVES = (
    "admiring",
    "agitated",
    "amazing",
    "awesome",
    "blissful",
    "bold",
    "brave",
    "charming",
    "clever",
    "cool",
    "dazzling",
    "determined",
    "eager",
    "ecstatic",
    "elastic",
    "elegant",
    "epic",
    "festive",
    "focused",
    "friendly",
    "funny",
    "gallant",
    "gifted",
    "happy",
    "hopeful",
    "jolly",
    "keen",
    "kind",
    "laughing",
    "loving",
    "lucid",
    "modest",
    "nice",
    "nifty",
    "optimistic",
    "peaceful",
    "practical",
    "quirky",
    "relaxed",
    "serene",
    "sharp",
    "stoic",
    "sweet",
    "tender",
    "trusting",
    "upbeat",
    "vibrant",
    "wizardly",
    "zealous",
)
_SURNAMES = (
    "babbage",
    "bardeen",
    "bell",
    "boole",
    "cerf",
    "dijkstra",
    "engelbart",
    "feistel",
    "hamming",
    "hopper",
    "kahn",
    "knuth",
    "lamport",
    "liskov",
    "lovelace",
    "mccarthy",
    "metcalfe",
    "noether",
    "postel",
    "ritchie",
    "shannon",
    "thompson",
    "torvalds",
    "turing",
    "wozniak",
    "yalow",
    "zuse",
)


def random_name(taken: Container[str]) -> str:
    while True:
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_SURNAMES)}"
        if name not in taken:
            return name
        name = f"{name}{secrets.randbelow(10)}"
        if name not in taken:
            return name

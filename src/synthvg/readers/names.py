"""Do two sources name the same thing? Cheap, documented name matching for the merge rule.

Two names are compatible when, after lower-casing, ``_`` -> space and a naive singular, they
share a key: the whole name, its head noun (last word: ``dining table`` ~ ``table``), a synset
lemma (``man.n.01`` -> ``man``), a synonym the source lists (LVIS), or an alias group (below,
extendable in ``seeds.merge.aliases``): COCO says ``person`` where VG says ``man`` or ``skier``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

#: Built-in alias groups: the group name (a COCO class) and names that mean the same object.
ALIASES: dict[str, tuple[str, ...]] = {
    "person": (
        "man",
        "woman",
        "boy",
        "girl",
        "child",
        "kid",
        "lady",
        "guy",
        "people",
        "player",
        "skier",
        "surfer",
        "skateboarder",
        "snowboarder",
        "batter",
        "catcher",
        "pitcher",
        "umpire",
        "rider",
        "adult",
        "baby",
        "individual",
        "tennis player",
        "men",
        "women",
    ),
    "tv": ("television", "television set", "tv monitor", "monitor", "screen"),
    "couch": ("sofa",),
    "motorcycle": ("motorbike", "motor bike", "minibike"),
    "bicycle": ("bike", "cycle"),
    "airplane": ("plane", "aeroplane", "jet", "aircraft"),
    "cell phone": ("phone", "cellphone", "mobile phone", "cellular telephone", "smartphone"),
    "dining table": ("table",),
    "sports ball": ("ball", "soccer ball", "tennis ball", "baseball", "football"),
    "hair drier": ("hair dryer", "blow dryer"),
    "donut": ("doughnut",),
    "potted plant": ("plant", "houseplant", "flowerpot"),
    "car": ("automobile", "auto", "motorcar"),
}

_SPACE = re.compile(r"[\s_]+")
_SYNSET = re.compile(r"[\w ]+\.[a-z]\.\d+")


def normalize(name: str) -> str:
    return _SPACE.sub(" ", name.strip().lower())


def singular(word: str) -> str:
    """A naive singular, good enough for matching (``buses`` -> ``bus``, ``skis`` -> ``ski``)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us")):
        return word[:-1]
    return word


def synset_lemma(synset: str) -> str:
    """``man.n.01`` -> ``man``; ``baseball_bat.n.01`` -> ``baseball bat``."""
    return synset.split(".", 1)[0].replace("_", " ")


class NameMatcher:
    """Name keys and the compatibility test, with the alias groups folded in."""

    def __init__(self, extra_aliases: Mapping[str, Iterable[str]] | None = None):
        self._memo: dict[str, frozenset[str]] = {}
        self._group: dict[str, str] = {}
        groups = {k: list(v) for k, v in ALIASES.items()}
        for k, v in (extra_aliases or {}).items():
            groups.setdefault(normalize(k), []).extend(v)
        for head, members in groups.items():
            for name in (head, *members):
                self._group[self._plain(name)] = f"alias:{normalize(head)}"

    @staticmethod
    def _plain(name: str) -> str:
        words = normalize(name).split(" ")
        return " ".join([*words[:-1], singular(words[-1])]) if words[0] else ""

    def keys(self, names: Iterable[str | None]) -> frozenset[str]:
        return frozenset().union(*(self._keys(n) for n in names if n))

    def _keys(self, name: str) -> frozenset[str]:
        """One name's keys (memoised: release files repeat a few thousand names millions of times)."""
        keys = self._memo.get(name)
        if keys is None:
            plain = self._plain(synset_lemma(name) if _SYNSET.fullmatch(name) else name)
            keys = frozenset(
                {plain, plain.rsplit(" ", 1)[-1], self._group.get(plain, plain)} if plain else ()
            )
            if len(self._memo) < 1_000_000:
                self._memo[name] = keys
        return keys

    @staticmethod
    def compatible(a: AbstractSet[str], b: AbstractSet[str]) -> bool:
        """Names match, or one side has no name at all (a description-only region)."""
        return not a or not b or not a.isdisjoint(b)

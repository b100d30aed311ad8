"""Predicate normalisation: one canonical form per meaning, the raw text always kept beside it.

Lower-case, trimmed, punctuation and repeated spaces removed, then mapped through a synonym
table shipped as ``data/predicate_synonyms.yaml`` (users extend it with their own file).
Human annotations carry no category: :func:`category_of` maps the predicates of PSG (all 56),
VG150 (all 50) and GQA's most frequent ones to the paper's five categories, else ``other``.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from pathlib import Path

import yaml

_CATEGORY_WORDS: dict[str, str] = {
    "spatial": """above|across|against|along|alongside|at|behind|below|beneath|beside|between|by|
        close to|far from|in|inside|inside of|in front of|near|next to|on|on top of|over|under|
        underneath|outside|outside of|around|surrounding|enclosing|to the left of|to the right of|
        left of|right of|on back of|on side of|in middle of|on edge of|attached to|hanging from|
        hanging on|hanging in|mounted on|parked on|parked in|parked near|growing on|growing in|
        painted on|printed on|lying on|laying on|lying in|laying in|sitting on|sitting in|
        sitting at|standing on|standing in|standing by|standing next to|leaning on|leaning against|
        resting on|on the side of|on the front of|on the back of|beyond|among|within""",
    "interactional": """holding|holds|carrying|carries|riding|rides|riding on|eating|drinking|using|
        playing|throwing|catching|kicking|pushing|pulling|touching|looking at|watching|walking on|
        walking in|walking down|walking across|running on|running in|driving|driving on|
        flying|flying in|flying over|jumping over|jumping from|jumping on|crossing|climbing|
        entering|exiting|going down|falling off|picking|cleaning|opening|cooking|slicing|cutting|
        swinging|about to hit|hitting|biting|chasing|feeding|guiding|reading|pointing at|
        grazing on|wearing|wears|wearing a|dressed in|swinging at|reaching for|petting|
        brushing|washing|sniffing|lifting|holding up""",
    "functional": """has|have|having|with|of|part of|belonging to|belongs to|made of|covered in|
        covered with|covering|covers|filled with|full of|contains|containing|for|says|
        supporting|supports|connected to|used for|displayed on|displaying|showing|reflected in|
        reflecting|casting|shadow of|belong to""",
    "social": """talking to|talking with|kissing|hugging|playing with|shaking hands with|
        walking with|sitting with|standing with|following|leading|helping|greeting|
        speaking to|dancing with|meeting""",
    "emotional": """smiling at|laughing at|laughing with|afraid of|scared of|loving|loves|likes|
        staring at|frowning at|crying|admiring|enjoying""",
}
_ARTICLES = re.compile(r"^(?:a|an|the) | (?:a|an|the)$")
_PUNCT = re.compile(r"[^\w\s'-]+")
_SPACES = re.compile(r"\s+")


@functools.lru_cache(maxsize=65536)
def clean(text: str) -> str:
    """Lower case, punctuation to spaces, spaces collapsed (memoised: a dataset repeats its few
    thousand predicates millions of times)."""
    return _SPACES.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


@functools.lru_cache(maxsize=8)
def load_synonyms(extra: str | None = None) -> dict[str, str]:
    table = yaml.safe_load(
        resources.files("synthvg.data").joinpath("predicate_synonyms.yaml").read_text()
    )
    if extra:
        table.update(yaml.safe_load(Path(extra).read_text()) or {})
    return {clean(k): clean(str(v)) for k, v in table.items()}


def normalise(text: str, synonyms: dict[str, str] | None = None) -> str:
    """The canonical predicate for ``text`` ('' when nothing is left after cleaning)."""
    cleaned = clean(text)
    table = load_synonyms() if synonyms is None else synonyms
    return table.get(cleaned, cleaned)


CATEGORY: dict[str, str] = {
    word.strip(): category
    for category, words in _CATEGORY_WORDS.items()
    for word in _SPACES.sub(" ", words).split("|")
}


def category_of(predicate: str) -> str:
    """The category of a normalised predicate (also tried without a leading/trailing article)."""
    return CATEGORY.get(predicate) or CATEGORY.get(_ARTICLES.sub("", predicate), "other")

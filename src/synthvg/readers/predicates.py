"""Seed predicates: normalisation and the small category mapping of ``relations.category``.

The mapping covers the predicates of PSG (all 56), VG150 (all 50) and GQA's most frequent
ones, in the paper's five categories; anything else is ``other``. The lookup also tries the
predicate without a leading or trailing article (``has a`` -> ``has``).
"""

from __future__ import annotations

import re

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
_SPACE = re.compile(r"\s+")
_ARTICLES = re.compile(r"^(?:a|an|the) | (?:a|an|the)$")

CATEGORY: dict[str, str] = {
    word.strip(): category
    for category, words in _CATEGORY_WORDS.items()
    for word in _SPACE.sub(" ", words).split("|")
}


def normalize_predicate(raw: str) -> str:
    """Lower-case and whitespace-normalised: ``"  Sitting   ON"`` -> ``sitting on``."""
    return _SPACE.sub(" ", raw.strip().lower())


def predicate_category(predicate: str) -> str:
    """The category of a normalised predicate, or ``other``."""
    return CATEGORY.get(predicate) or CATEGORY.get(_ARTICLES.sub("", predicate), "other")

"""Versioned prompt templates. A prompt's version is its name plus a hash of its file, recorded
with every row it produced, so any change of wording is visible in the data and redoes the stage.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

_SECTION = re.compile(r"^## (system|user)\s*$", re.M)
_COMMENT = re.compile(r"<!--.*?-->\s*", re.S)


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: str
    sha256: str

    @property
    def version(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def render_user(self, **values) -> str:
        return self.user.format(**values)


@functools.lru_cache(maxsize=32)
def load_prompt(name: str) -> Prompt:
    """Load ``prompts/<name>.md`` (e.g. ``teacher/v1``) shipped with the package."""
    path = resources.files("synthvg.prompts").joinpath(f"{name}.md")
    if not path.is_file():
        raise FileNotFoundError(
            f"no prompt template {name!r} (looked for synthvg/prompts/{name}.md)"
        )
    raw = path.read_text()
    parts = _SECTION.split(_COMMENT.sub("", raw))
    sections = dict(zip(parts[1::2], (p.strip() for p in parts[2::2]), strict=True))
    if set(sections) != {"system", "user"}:
        raise ValueError(f"prompt {name!r} needs exactly a '## system' and a '## user' section")
    return Prompt(
        name=name,
        system=sections["system"],
        user=sections["user"],
        sha256=hashlib.sha256(raw.encode()).hexdigest(),
    )

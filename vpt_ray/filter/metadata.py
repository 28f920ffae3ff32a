"""Metadata filters on a video's title and description (VPT paper App. A).

Two filters, both case-insensitive regexes with word boundaries, applied to the title and the description
separately (a match never spans the two):

- the **blacklist** drops console/pocket editions, timelapses, multiplayer, skyblock, tutorials about installing,
  animations ... (footage whose controls or view differ from the PC survival game);
- the **early-game keywords** pick videos that start a fresh world ("episode 1", "day 1", "new world", "from
  scratch", ...); the ``earlygame_keyword`` dataset keeps only their first 5 minutes
  (``FilterConfig.early_game_only``: the filter then decodes no further).
"""

from __future__ import annotations

import re

# (name reported as the drop reason, pattern). Separators inside a term may be a space, a hyphen or nothing
# ("xbox360", "time-lapse") because uploaders spell them every way.
_BLACKLIST_TERMS: tuple[tuple[str, str], ...] = (
    ("ps3", r"ps\s?3"),
    ("ps4", r"ps\s?4"),
    ("ps5", r"ps\s?5"),
    ("xbox 360", r"xbox[\s-]?360"),
    ("playstation", r"play[\s-]?station"),
    ("timelapse", r"time[\s-]?lapse"),
    ("multiplayer", r"multi[\s-]?player"),
    ("minecraft pe", r"minecraft[\s-]?pe"),
    ("pocket edition", r"pocket[\s-]edition"),
    ("skyblock", r"sky[\s-]?block"),
    ("realistic minecraft", r"realistic[\s-]minecraft"),
    ("how to install", r"how\s+to\s+install"),
    ("how to download", r"how\s+to\s+download"),
    ("realmcraft", r"realmcraft"),
    ("animation", r"animation"),
)
BLACKLIST: tuple[str, ...] = tuple(name for name, _ in _BLACKLIST_TERMS)
# A trailing "s" is allowed (plural "animations", "timelapses"); \b on both sides keeps "ps4" out of "gps40".
_BLACKLIST_RES = tuple((name, re.compile(rf"\b{pat}s?\b", re.IGNORECASE)) for name, pat in _BLACKLIST_TERMS)

# Episode-like words followed by the number 1 ("Ep.1", "episode #01", "Day-1", "Bölüm 1") but not 10, 12, 1.5.
_EPISODE_WORDS = r"ep|episode|eps|day|session|sesh|chapter|chap|series|part|parte|pt|round|bölüm|episodio"
_EARLY_GAME_TERMS: tuple[tuple[str, str], ...] = (
    ("episode 1", rf"\b(?:{_EPISODE_WORDS})\.?\s*[#:.\-_]?\s*0*1(?![\d.,]\d|\d)"),
    ("start", r"\bstart(?:s|ed|ing)?\b"),
    ("beginning", r"\bbeginnings?\b"),
    ("new world", r"\b(?:new|fresh|clean)\b.*\b(?:world|game|play)"),
    ("from scratch", r"\bfrom\s+scratch\b"),
)
EARLY_GAME_KEYWORDS: tuple[str, ...] = tuple(name for name, _ in _EARLY_GAME_TERMS)
_EARLY_GAME_RES = tuple((name, re.compile(pat, re.IGNORECASE)) for name, pat in _EARLY_GAME_TERMS)


def blacklist_match(title: str, description: str = "") -> str | None:
    """The first blacklisted term found in ``title`` or ``description`` (its name in :data:`BLACKLIST`), or None."""
    return _first_match(_BLACKLIST_RES, title, description)


def is_blacklisted(title: str, description: str = "") -> bool:
    return blacklist_match(title, description) is not None


def early_game_match(title: str, description: str = "") -> str | None:
    """The first early-game keyword (its name in :data:`EARLY_GAME_KEYWORDS`) the metadata matches, or None."""
    return _first_match(_EARLY_GAME_RES, title, description)


def is_early_game(title: str, description: str = "") -> bool:
    return early_game_match(title, description) is not None


def _first_match(patterns, title: str, description: str) -> str | None:
    for text in (title or "", description or ""):
        for name, regex in patterns:
            if regex.search(text):
                return name
    return None

"""Wording checks of the strict policy: forbidden words and think length, on a fast path.

All forbidden words are found by one regex scan of a copy of the (lower-cased, ASCII) think text in
which every non-word character is a space; `_forbidden_by_regex` is the plain matcher for any text,
and the reference the fast path is tested against (tests/unit/test_verifier_reference.py).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

from engine.core.config import VerifierConfig

_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")
# ASCII text -> bytes where every non-word character is a space, so " word " finds whole words
# with exactly the boundaries of regex \b (word characters are [a-z0-9_] once lower-cased).
_NON_WORD_TO_SPACE = bytes(c if chr(c) in _WORD_CHARS else 32 for c in range(256))


class _Rules(NamedTuple):
    words: tuple[str, ...]  # lower-cased forbidden words, in configured order
    words_re: re.Pattern[str] | None  # the reference matcher (any text)
    # The ASCII matcher over _spaced() text: " (word)(?= )", with what each match reports; None when
    # a word is not [a-z0-9_]+ (it could span a separator) or nothing is forbidden.
    spaced_re: re.Pattern[bytes] | None
    spaced_words: dict[bytes, str]
    counts_contractions: bool  # "not" is forbidden, so "isn't", "don’t", "cannot" are too
    hint_phrases: tuple[str, ...]


def _alternation(words: Iterable[str]) -> str:
    """Literal alternatives grouped by first character ("n(?:ot|o)"): the regex engine then tries
    fewer branches at each position."""
    by_first: dict[str, list[str]] = {}
    for word in sorted(set(words), key=len, reverse=True):
        by_first.setdefault(word[0], []).append(word[1:])
    groups = [re.escape(first) + ("(?:" + "|".join(map(re.escape, rests)) + ")" if rests != [""] else "")
              for first, rests in by_first.items()]
    return "|".join(groups)


@lru_cache(maxsize=64)
def _rules(forbidden_words: tuple[str, ...], hint_phrases: tuple[str, ...]) -> _Rules:
    words = tuple(dict.fromkeys(w.strip().lower() for w in forbidden_words if w.strip()))
    counts_contractions = "not" in words
    alternatives = list(words) + (["n't", "n’t", "cannot"] if counts_contractions else [])
    words_re = re.compile(f"(?:{_alternation(alternatives)})\\b") if alternatives else None
    # "cannot" is one word, so it is matched whole; the glued "n't" is left to the reference regex.
    spaced_words = {w.encode(): w for w in words}
    if counts_contractions:
        spaced_words.setdefault(b"cannot", "not")
    plain = all(set(w) <= _WORD_CHARS for w in words)
    spaced_re = (re.compile(f" ({_alternation(map(bytes.decode, spaced_words))})(?= )".encode())
                 if plain and spaced_words else None)
    return _Rules(words, words_re, spaced_re, spaced_words if plain else {}, counts_contractions,
                  tuple(p.lower() for p in hint_phrases if p.strip()))


def _forbidden_by_regex(lower: str, rules: _Rules) -> set[str]:
    found: set[str] = set()
    if rules.words_re is None:
        return found
    for match in rules.words_re.finditer(lower):
        word, start = match.group(), match.start()
        if word in ("n't", "n’t"):
            found.add("not")  # a contraction is glued to its verb by design
        elif start and (lower[start - 1].isalnum() or lower[start - 1] == "_"):
            continue  # the tail of a longer word ("piano", "knot")
        else:
            found.add("not" if word == "cannot" and rules.counts_contractions and word not in rules.words
                      else word)
    return found


def _forbidden_ascii(lower: str, spaced: bytes, rules: _Rules) -> list[str]:
    """The forbidden words in ASCII `lower`, in configured order, from one scan of `spaced` (see
    _spaced), where every word is preceded and followed by a space; the reference regex runs only
    to confirm a contraction."""
    assert rules.spaced_re is not None
    matches = rules.spaced_re.findall(spaced)
    found = {rules.spaced_words[m] for m in matches} if matches else set()
    # "'" is rare in model text and found by memchr, so it guards the slower "n't" search.
    if (rules.counts_contractions and "not" not in found and "'" in lower and "n't" in lower
            and "not" in _forbidden_by_regex(lower, rules)):
        found.add("not")
    return [word for word in rules.words if word in found] if found else []


def _spaced(lower: str) -> bytes:
    return b" " + lower.encode("ascii").translate(_NON_WORD_TO_SPACE) + b" "


def _forbidden_found(lower: str, spaced: bytes | None, rules: _Rules) -> list[str]:
    if spaced is not None and rules.spaced_re is not None:
        return _forbidden_ascii(lower, spaced, rules)
    found = _forbidden_by_regex(lower, rules)
    return [w for w in rules.words if w in found] + sorted(found.difference(rules.words))


def forbidden_words_in(think: str, cfg: VerifierConfig) -> list[str]:
    """Configured forbidden words found as whole words in `think` (case-insensitive), in configured
    order; contractions ("isn't") and "cannot" are reported as "not" when "not" is forbidden."""
    lower = think.lower()
    return _forbidden_found(lower, _spaced(lower) if lower.isascii() else None,
                            _rules(cfg.forbidden_words, cfg.hint_phrases))


def think_words_exceed(think: str, limit: int, *, spaced: bytes | None = None) -> bool:
    """len(think.split()) > limit, splitting only when a cheap upper bound cannot decide it."""
    if spaced is not None and spaced.count(b" ") - 1 <= limit:  # words <= separators + 1
        return False
    if (len(think) + 1) // 2 <= limit:  # each word takes a character and a separator
        return False
    return len(think.split(None, limit)) > limit

"""FACS vocabulary: the FACS code set, the wording of the 30 Action Units the Facial-R1 prompt
defines, the eight emotion nouns, per-dataset label sets, EMFACS prototypes, and the normalisation of
AU ids and labels.

Canonical forms: AU ids are "AU" + integer without zero padding ("AU4", "AU12"). Every FACS code is
valid: AU1-AU46, the head and eye codes 51-66, 70-72 and 80-85 (the issue-level spec of this project;
the 30 prompt AUs have wording, any other valid id is named by its id). Side and intensity marks
normalise to the base id ("R12A", "L14B", "AU12E", "AU 4" -> "AU12", "AU14", "AU12", "AU4").

Unknown is not absent: an empty gold AU list means the AUs are *unknown* (emotion-only sources such
as RAF-DB); a face known to show no AU at all says so with the one explicit form NO_AU ("AU0", FACS
code 0, "neutral face"), alone in its list. Labels are open: the eight nouns (with their adjectives
and simple synonyms) map onto EMOTIONS, any other label is kept lower-cased with single spaces
("Bitter Sweet " -> "bitter sweet"). Anything that cannot be mapped is reported, never guessed.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

# The 30 AUs defined in the Facial-R1 prompt, in numeric order.
AU_DESCRIPTIONS: dict[str, str] = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU5": "upper lid raiser",
    "AU6": "cheek raiser",
    "AU7": "lid tightener",
    "AU9": "nose wrinkler",
    "AU10": "upper lip raiser",
    "AU11": "nasolabial furrow deepener",
    "AU12": "lip corner puller",
    "AU13": "cheek puffer",  # FACS proper calls AU13 "sharp lip puller"; the paper's prompt says cheek puffer
    "AU14": "dimpler",
    "AU15": "lip corner depressor",
    "AU16": "lower lip depressor",
    "AU17": "chin raiser",
    "AU18": "lip pucker",
    "AU19": "tongue show",
    "AU20": "lip stretcher",
    "AU22": "lip funneler",
    "AU23": "lip tightener",
    "AU24": "lip pressor",
    "AU25": "lips part",
    "AU26": "jaw drop",
    "AU27": "mouth stretch",
    "AU28": "lip suck",
    "AU29": "jaw thrust",
    "AU30": "jaw sideways",
    "AU31": "jaw clencher",
    "AU32": "lip bite",
    "AU43": "eyes closed",
}
AU_IDS: tuple[str, ...] = tuple(AU_DESCRIPTIONS)
# Every valid FACS code number: action units 1-46, head and eye positions 51-66, visibility 70-72 and
# gross behaviour 80-85.
FACS_NUMBERS: frozenset[int] = frozenset([*range(1, 47), *range(51, 67), 70, 71, 72, *range(80, 86)])
FACS_IDS: tuple[str, ...] = tuple(f"AU{n}" for n in sorted(FACS_NUMBERS))
# The explicit "this face shows no Action Unit" form (FACS code 0, neutral face); an empty list means unknown.
NO_AU = "AU0"

EMOTIONS: tuple[str, ...] = ("anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
_SEVEN = tuple(e for e in EMOTIONS if e != "contempt")
_SIX = tuple(e for e in EMOTIONS if e not in ("contempt", "neutral"))

# Emotion label set per source dataset; () = AU-only dataset (no emotion labels).
DATASET_LABELS: dict[str, tuple[str, ...]] = {
    "AffectNet": EMOTIONS,
    "CK+": EMOTIONS,
    "FER2013": _SEVEN,
    "RAF-DB": _SEVEN,
    "FABA": _SEVEN,
    "JAFFE": _SEVEN,
    "RAF-AU": _SIX,
    "DISFA": (),
    "BP4D": (),
    # further sources of the official per-source table (open_r1/configs/config.json)
    "ExpW": _SEVEN,
    "SFEW": _SEVEN,
    "KDEF": _SEVEN,
    "WSEFEP": _SEVEN,
    "NHFI": EMOTIONS,
    "NIMH-ChEFS": ("anger", "fear", "happiness", "neutral", "sadness"),
    "SynthFaces": EMOTIONS,
}
_DATASET_BY_LOWER = {name.lower(): labels for name, labels in DATASET_LABELS.items()}

# EMFACS prototypes as commonly tabulated (contempt is unilateral 12+14; neutral has no AU).
PROTOTYPES: dict[str, tuple[str, ...]] = {
    "happiness": ("AU6", "AU12"),
    "sadness": ("AU1", "AU4", "AU15"),
    "surprise": ("AU1", "AU2", "AU5", "AU26"),
    "fear": ("AU1", "AU2", "AU4", "AU5", "AU7", "AU20", "AU26"),
    "anger": ("AU4", "AU5", "AU7", "AU23"),
    "disgust": ("AU9", "AU15", "AU16"),
    "contempt": ("AU12", "AU14"),
    "neutral": (),
}

# Words that name an emotion: the nouns themselves, their adjectives, and a few common synonyms.
_EMOTION_WORDS: dict[str, str] = {
    "anger": "anger", "angry": "anger",
    "contempt": "contempt", "contemptuous": "contempt",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "scared": "fear", "afraid": "fear",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness", "joyful": "happiness",
    "neutral": "neutral",
    "sadness": "sadness", "sad": "sadness",
    "surprise": "surprise", "surprised": "surprise",
}
# Punctuation and quotes a model or annotator may wrap a one-word label in.
_LABEL_STRIP = " \t\r\n.,;:!?\"'`*()[]{}"

# One AU token: optional side prefix (L12, R14), optional "AU" (with an optional separator), the
# number (zero padding allowed), then an optional intensity letter A-E and/or side suffix, in
# either order (AU12B, AU12L, AU12BL, 12B, 5E).
_AU_TOKEN = re.compile(r"([LR]?)(?:AU[ _-]?)?0*(\d{1,3})(?:[A-E]?[LR]?|[LR][A-E])", re.IGNORECASE)


def label_set_for(dataset: str | None) -> tuple[str, ...] | None:
    """The dataset's emotion label set (case-insensitive name), () for AU-only datasets, None if unknown."""
    if not dataset:
        return None
    return _DATASET_BY_LOWER.get(dataset.strip().lower())


def is_facs_id(au_id: str) -> bool:
    """A canonical id of a valid FACS code ("AU33" yes, "AU3"... see FACS_NUMBERS; "AU04", "AU99" no)."""
    return au_id.startswith("AU") and au_id[2:].isdigit() and au_id[2:3] != "0" and int(au_id[2:]) in FACS_NUMBERS


def au_number(au_id: str) -> int:
    """The number of a canonical FACS id ("AU12" -> 12, NO_AU -> 0)."""
    if au_id != NO_AU and not is_facs_id(au_id):
        raise ValueError(f"not a canonical AU id: {au_id!r}")
    return int(au_id[2:])


def au_name(au_id: str) -> str | None:
    """The prompt's wording for an AU ("AU4" -> "brow lowerer"); None for ids it has no wording for."""
    return AU_DESCRIPTIONS.get(au_id)


def normalize_au(token: str) -> str | None:
    """"AU04", "au 4", "AU12B", "L12", "R14", "R12A", "AU12L", "12B" -> canonical id; "AU0" -> NO_AU;
    None when the token is not an AU id or its number is no FACS code."""
    match = _AU_TOKEN.fullmatch(token.strip())
    if match is None:
        return None
    number = int(match.group(2))
    if number == 0 and not match.group(1):
        return NO_AU
    if number not in FACS_NUMBERS:
        return None
    return f"AU{number}"


def normalize_aus(tokens: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(canonical ids, unique and sorted numerically; tokens that are no FACS id, stripped, in
    first-seen order). NO_AU next to real AUs contradicts them and is reported as unknown."""
    known: set[str] = set()
    unknown: list[str] = []
    no_au: list[str] = []  # the tokens that said "no AU", reported if real AUs contradict them
    for token in tokens:
        canonical = normalize_au(token)
        if canonical == NO_AU:
            no_au.append(token.strip())
        elif canonical is not None:
            known.add(canonical)
        elif token.strip() not in unknown:
            unknown.append(token.strip())
    if no_au and not known:
        known.add(NO_AU)
    elif no_au:
        unknown += [shown for shown in dict.fromkeys(no_au) if shown not in unknown]
    return sort_aus(known), tuple(unknown)


def aus_known(aus: Iterable[str]) -> bool:
    """Whether a gold AU list states the face's AUs (non-empty, NO_AU included) or leaves them unknown."""
    return any(True for _ in aus)


def present_aus(aus: Iterable[str]) -> tuple[str, ...]:
    """The AUs a gold list says are present: NO_AU stands for none."""
    return tuple(au for au in aus if au != NO_AU)


def sort_aus(au_ids: Iterable[str]) -> tuple[str, ...]:
    """Canonical ids in numeric order (AU2 before AU10), duplicates removed."""
    return tuple(sorted(set(au_ids), key=au_number))


def normalize_label(word: str) -> str | None:
    """Any label -> its compared form: an emotion noun where the word names one of the eight ("Happy"
    -> "happiness"), else the word lower-cased with single spaces and no wrapping punctuation
    ("Bitter Sweet." -> "bitter sweet"); None when nothing is left."""
    cleaned = " ".join(word.strip(_LABEL_STRIP).lower().split())
    if not cleaned:
        return None
    return _EMOTION_WORDS.get(cleaned, cleaned)


def normalize_emotion(word: str, label_set: Sequence[str] | None = None) -> str | None:
    """An emotion word (noun, adjective or common synonym, any case, wrapped in punctuation or not)
    -> its noun; None when it names no emotion, or names one outside `label_set` when given."""
    noun = _EMOTION_WORDS.get(word.strip(_LABEL_STRIP).lower())
    if noun is None or (label_set is not None and noun not in label_set):
        return None
    return noun

"""FACS vocabulary and normalisation: canonical ids, label sets, prototypes, and what is refused."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.core.facs import (
    AU_DESCRIPTIONS,
    AU_IDS,
    DATASET_LABELS,
    FACS_IDS,
    NO_AU,
    EMOTIONS,
    PROTOTYPES,
    au_number,
    label_set_for,
    normalize_au,
    normalize_aus,
    normalize_emotion,
    sort_aus,
)


def test_the_thirty_aus_of_the_prompt():
    assert len(AU_DESCRIPTIONS) == 30
    numbers = [au_number(au) for au in AU_IDS]
    assert numbers == sorted(numbers)
    assert {3, 8, 21, 33} & set(numbers) == set()
    assert AU_DESCRIPTIONS["AU1"] == "inner brow raiser"
    assert AU_DESCRIPTIONS["AU12"] == "lip corner puller"
    assert AU_DESCRIPTIONS["AU43"] == "eyes closed"


def test_label_sets_per_dataset():
    assert set(EMOTIONS) == {"anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"}
    for name in ("AffectNet", "CK+", "SynthFaces"):
        assert set(DATASET_LABELS[name]) == set(EMOTIONS)
    for name in ("FER2013", "RAF-DB", "FABA", "JAFFE"):
        assert set(DATASET_LABELS[name]) == set(EMOTIONS) - {"contempt"}
    assert set(DATASET_LABELS["RAF-AU"]) == set(EMOTIONS) - {"contempt", "neutral"}
    assert DATASET_LABELS["DISFA"] == DATASET_LABELS["BP4D"] == ()
    assert label_set_for("raf-db") == DATASET_LABELS["RAF-DB"]
    assert label_set_for("Unheard-Of") is None
    assert label_set_for(None) is None


def test_prototypes_use_known_aus_and_every_emotion():
    assert set(PROTOTYPES) == set(EMOTIONS)
    assert PROTOTYPES["happiness"] == ("AU6", "AU12")
    assert PROTOTYPES["surprise"] == ("AU1", "AU2", "AU5", "AU26")
    assert PROTOTYPES["neutral"] == ()
    for aus in PROTOTYPES.values():
        assert all(au in AU_DESCRIPTIONS for au in aus)
        assert tuple(sort_aus(aus)) == aus


@pytest.mark.parametrize("token,expected", [
    ("AU4", "AU4"), ("AU04", "AU4"), ("au 4", "AU4"), ("AU 12", "AU12"), ("AU12B", "AU12"),
    ("L12", "AU12"), ("R14", "AU14"), ("AU12L", "AU12"), ("12B", "AU12"), ("5E", "AU5"), ("au-26", "AU26"),
    (" AU43 ", "AU43"), ("AU12BR", "AU12"), ("r12", "AU12"),
])
def test_normalize_au_accepts_padding_case_intensity_and_side(token, expected):
    assert normalize_au(token) == expected


@pytest.mark.parametrize("token", ["AU99", "AU47", "AU50", "AU67", "AU73", "AU86", "AU", "", "brow", "AU12F",
                                   "AU 12 B", "X12", "AU1234", "L0"])
def test_normalize_au_refuses_unknown_ids(token):
    assert normalize_au(token) is None


def test_normalize_aus_sorts_numerically_and_reports_unknown():
    known, unknown = normalize_aus(["AU12", "au 2", "AU99", "AU04", "L12", "AU47", "AU99"])
    assert known == ("AU2", "AU4", "AU12")
    assert unknown == ("AU99", "AU47")


def test_au_number_refuses_non_canonical():
    assert au_number("AU26") == 26
    with pytest.raises(ValueError):
        au_number("AU04")


@pytest.mark.parametrize("word,expected", [
    ("angry", "anger"), ("Anger", "anger"), ("happy", "happiness"), ("JOY", "happiness"), ("joyful", "happiness"),
    ("sad", "sadness"), ("surprised", "surprise"), ("fearful", "fear"), ("scared", "fear"), ("afraid", "fear"),
    ("disgusted", "disgust"), ("contemptuous", "contempt"), ("Neutral", "neutral"), (" sadness. ", "sadness"),
    ('"happiness"', "happiness"),
])
def test_normalize_emotion_maps_adjectives_and_synonyms(word, expected):
    assert normalize_emotion(word) == expected


@pytest.mark.parametrize("word", ["calm", "mad", "very sad", "", "happy face", "sadnesss"])
def test_normalize_emotion_refuses_other_words(word):
    assert normalize_emotion(word) is None


def test_normalize_emotion_is_restricted_to_the_label_set():
    assert normalize_emotion("contemptuous", DATASET_LABELS["RAF-DB"]) is None
    assert normalize_emotion("contemptuous", DATASET_LABELS["AffectNet"]) == "contempt"
    assert normalize_emotion("neutral", DATASET_LABELS["RAF-AU"]) is None
    assert normalize_emotion("happy", ()) is None


# ---------------------------------------------------------------- properties
_au_numbers = st.sampled_from([au_number(au) for au in AU_IDS])
_variant = st.sampled_from(["AU{n}", "AU{n:02d}", "au {n}", "AU {n}", "AU{n}B", "L{n}", "R{n}", "AU{n}L", "{n}C",
                            "au-{n:03d}", "AU{n}ER"])


@given(_au_numbers, _variant)
def test_every_written_form_round_trips_to_the_canonical_id(number, variant):
    canonical = f"AU{number}"
    written = variant.format(n=number)
    assert normalize_au(written) == canonical
    assert normalize_au(canonical) == canonical


@given(st.text(max_size=12))
def test_normalize_au_is_idempotent_and_only_returns_canonical_ids(token):
    result = normalize_au(token)
    if result is not None:
        assert result in FACS_IDS or result == NO_AU
        assert normalize_au(result) == result


@given(st.lists(st.one_of(st.sampled_from(AU_IDS), st.text(max_size=6)), max_size=10))
def test_normalize_aus_accounts_for_every_token(tokens):
    known, unknown = normalize_aus(tokens)
    assert list(known) == sorted(set(known), key=au_number)
    for token in tokens:
        assert (normalize_au(token) in known) != (token.strip() in unknown)


@given(st.one_of(st.sampled_from(EMOTIONS), st.text(max_size=15)))
def test_normalize_emotion_is_idempotent(word):
    noun = normalize_emotion(word)
    if noun is not None:
        assert noun in EMOTIONS
        assert normalize_emotion(noun) == noun


# ---------------------------------------------------------------- the FACS code set, open labels
@pytest.mark.parametrize("token,expected", [
    ("R12A", "AU12"), ("L14B", "AU14"), ("AU12E", "AU12"), ("AU 4", "AU4"), ("AU33", "AU33"), ("AU37", "AU37"),
    ("AU39", "AU39"), ("AU46", "AU46"), ("AU51", "AU51"), ("AU66", "AU66"), ("AU70", "AU70"), ("AU72", "AU72"),
    ("AU80", "AU80"), ("AU85", "AU85"), ("30", "AU30"), ("AU0", NO_AU), ("AU00", NO_AU),
])
def test_every_facs_code_normalises_to_its_base_id(token, expected):
    assert normalize_au(token) == expected


def test_facs_code_set_and_wording():
    from engine.core.facs import au_name, is_facs_id

    assert len(FACS_IDS) == 46 + 16 + 3 + 6
    assert all(is_facs_id(au) for au in FACS_IDS)
    assert not any(is_facs_id(au) for au in ("AU0", "AU47", "AU04", "AU99", "AU", "X4"))
    assert au_name("AU4") == "brow lowerer" and au_name("AU33") is None  # named by its id in prompts


def test_no_au_form_stands_alone():
    assert normalize_aus(["AU0"]) == ((NO_AU,), ())
    # "no AU" next to real AUs contradicts them: the real ones are kept, the contradiction reported
    assert normalize_aus(["AU0", "AU4"]) == (("AU4",), ("AU0",))
    assert normalize_aus([]) == ((), ())  # empty = unknown


@pytest.mark.parametrize("word,expected", [
    ("Happy", "happiness"), (" SAD. ", "sadness"), ("Confusion", "confusion"), ("Bitter  Sweet!", "bitter sweet"),
    ("determination", "determination"), ("  ", None), ("...", None),
])
def test_normalize_label_keeps_open_labels(word, expected):
    from engine.core.facs import normalize_label

    assert normalize_label(word) == expected

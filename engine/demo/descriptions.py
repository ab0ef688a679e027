"""Template teacher reasoning for the synthetic faces: each AU's visible change in words, with its
id in parentheses, and the reasoning from those changes to the emotion."""
from __future__ import annotations

import numpy as np

from engine.demo.render import FaceStyle

_PHRASES: dict[str, tuple[str, ...]] = {
    "AU1": ("the inner brows are {adv}raised (AU1)", "the inner corners of the brows {adv}lift (AU1)"),
    "AU2": ("the outer brows are {adv}raised (AU2)", "the outer ends of the brows {adv}lift (AU2)"),
    "AU4": ("the brows are {adv}lowered and drawn together (AU4)", "the brows {adv}pull down and together (AU4)"),
    "AU5": ("the upper eyelids are {adv}raised, widening the eyes (AU5)", "the eyes are {adv}widened by lifted upper lids (AU5)"),
    "AU6": ("the cheeks are {adv}raised (AU6)", "the cheeks {adv}lift toward the eyes (AU6)"),
    "AU7": ("the eyelids are {adv}tightened (AU7)", "the lids {adv}tighten around the eyes (AU7)"),
    "AU9": ("the nose is {adv}wrinkled (AU9)", "lines {adv}crease across the nose (AU9)"),
    "AU10": ("the upper lip is {adv}raised (AU10)", "the upper lip {adv}lifts (AU10)"),
    "AU11": ("the nasolabial furrows are {adv}deepened (AU11)", "the furrows beside the nose {adv}deepen (AU11)"),
    "AU12": ("the lip corners are {adv}pulled up (AU12)", "the mouth corners {adv}pull upward (AU12)"),
    "AU13": ("the cheeks are {adv}puffed out (AU13)", "the cheeks {adv}puff outward (AU13)"),
    "AU14": ("dimples {adv}form at the mouth corners (AU14)", "the mouth corners are {adv}tucked into dimples (AU14)"),
    "AU15": ("the lip corners are {adv}pulled down (AU15)", "the mouth corners {adv}turn downward (AU15)"),
    "AU16": ("the lower lip is {adv}pulled down (AU16)", "the lower lip {adv}drops (AU16)"),
    "AU17": ("the chin is {adv}raised, pushing the lower lip up (AU17)", "the chin {adv}bunches upward (AU17)"),
    "AU18": ("the lips are {adv}puckered (AU18)", "the lips {adv}push forward into a pucker (AU18)"),
    "AU19": ("the tongue is {adv}shown (AU19)", "the tongue {adv}shows between the lips (AU19)"),
    "AU20": ("the lips are {adv}stretched sideways (AU20)", "the mouth is {adv}stretched wide (AU20)"),
    "AU22": ("the lips are {adv}funneled (AU22)", "the lips {adv}form a funnel (AU22)"),
    "AU23": ("the lips are {adv}tightened (AU23)", "the lips {adv}tighten into a thin line (AU23)"),
    "AU24": ("the lips are {adv}pressed together (AU24)", "the lips {adv}press against each other (AU24)"),
    "AU25": ("the lips are {adv}parted (AU25)", "the lips {adv}part (AU25)"),
    "AU26": ("the jaw {adv}drops, opening the mouth (AU26)", "the mouth {adv}falls open as the jaw drops (AU26)"),
    "AU27": ("the mouth is {adv}stretched open (AU27)", "the mouth {adv}opens very wide (AU27)"),
    "AU28": ("the lips are {adv}sucked in (AU28)", "the lips {adv}roll inward (AU28)"),
    "AU30": ("the jaw is {adv}shifted sideways (AU30)", "the jaw {adv}moves to one side (AU30)"),
    "AU43": ("the eyes are {adv}closed (AU43)", "the eyelids {adv}shut (AU43)"),
}
_ONE_SIDED_PHRASES: dict[str, tuple[str, ...]] = {
    "AU12": ("the lip corner on the {side} of the image is {adv}pulled up (AU12)",
             "only the mouth corner on the {side} of the image {adv}lifts (AU12)"),
    "AU14": ("a dimple {adv}forms at the mouth corner on the {side} of the image (AU14)",
             "the mouth corner on the {side} of the image is {adv}tucked in (AU14)"),
}
_GIST: dict[str, tuple[str, ...]] = {
    "happiness": ("a warm, smiling look", "a cheerful smile"),
    "sadness": ("a downcast, sorrowful look", "a drooping, unhappy face"),
    "surprise": ("a startled, wide-open look", "an astonished face"),
    "fear": ("a tense, alarmed look", "a frightened, strained face"),
    "anger": ("a hard, hostile glare", "a tense, furious face"),
    "disgust": ("a repelled, sneering look", "a face recoiling from something unpleasant"),
    "contempt": ("a one-sided, dismissive smirk", "a scornful half smile"),
    "neutral": ("a calm, resting face", "a relaxed expression"),
}
_NEUTRAL_OPENINGS = (
    "The face is relaxed: the brows rest level, the eyes are calm and the mouth rests in a soft line.",
    "The facial muscles appear at rest, with level brows, open calm eyes and a closed, relaxed mouth.",
)
_TEMPLATES = (
    "Looking at the face, {features}. Together {these} form {gist}, which indicates {emotion}.",
    "The image shows a face where {features}. This pattern of facial action matches {emotion}, giving {gist}.",
    "Key facial features: {features_semicolon}. Such a configuration is typical of {emotion}: {gist}.",
)
_TWO_PART = "In the upper face, {upper}. In the lower face, {lower}. Overall the expression reads as {gist}, so the emotion is {emotion}."
_UPPER_FACE = frozenset({"AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU43"})


def _adverb(intensity: float) -> str:
    return "slightly " if intensity < 0.5 else ("strongly " if intensity > 0.85 else "")


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def feature_phrases(aus: dict[str, float], style: FaceStyle, rng: np.random.Generator) -> list[tuple[str, str]]:
    phrases = []
    for au, value in aus.items():
        options = _ONE_SIDED_PHRASES[au] if au in style.one_sided else _PHRASES[au]
        text = str(rng.choice(options)).format(adv=_adverb(value), side=style.side)
        phrases.append((au, text))
    return phrases


def describe(emotion: str, aus: dict[str, float], style: FaceStyle, rng: np.random.Generator) -> str:
    """Template teacher reasoning: '<think>...</think><answer>emotion</answer>' mentioning exactly
    the AUs in `aus` and reasoning from them to `emotion`."""
    gist = str(rng.choice(_GIST[emotion]))
    phrases = feature_phrases(aus, style, rng)
    if not phrases:
        think = f"{rng.choice(_NEUTRAL_OPENINGS)} This adds up to {gist}, which indicates {emotion}."
    else:
        upper = [text for au, text in phrases if au in _UPPER_FACE]
        lower = [text for au, text in phrases if au not in _UPPER_FACE]
        texts = [text for _, text in phrases]
        if upper and lower and rng.random() < 0.3:
            think = _TWO_PART.format(upper=_join(upper), lower=_join(lower), gist=gist, emotion=emotion)
        else:
            template = str(rng.choice(_TEMPLATES))
            these = "these movements" if len(texts) > 1 else "this movement"
            think = template.format(features=_join(texts), features_semicolon="; ".join(texts), these=these, gist=gist,
                                    emotion=emotion)
    return f"<think>{think[0].upper()}{think[1:]}</think><answer>{emotion}</answer>"

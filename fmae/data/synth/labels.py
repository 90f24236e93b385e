"""Label statistics of the synthetic data: AU occurrence like the real benchmarks, and FER classes.

AUs: a Gaussian-copula model. Each frame has a few latent expression factors (smile, brow raise,
frown, mouth open) that follow an AR(1) process within a video, so frames of one task are correlated as
in real recordings and AUs co-occur as they do (AU6 with AU12, AU1 with AU2). An AU is present when its
score passes a per-subject threshold: each subject has its own rate for every AU, spread around the
dataset's typical rate by `identity_strength` — the identity shortcut that identity-adversarial
training exists to remove. How far the score passes the threshold sets the drawn intensity, so AUs
near the threshold are drawn subtly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# Factor loadings by AU code (rows need sum of squares < 1; the rest is the AU's own noise).
_FACTORS = ("smile", "brow_raise", "frown", "mouth_open")
_LOADINGS: dict[int, tuple[float, float, float, float]] = {
    1: (0.0, 0.9, 0.15, 0.0),
    2: (0.0, 0.92, 0.0, 0.1),
    4: (0.0, -0.2, 0.8, 0.0),
    5: (0.0, 0.5, 0.0, 0.3),
    6: (0.8, 0.0, 0.0, 0.0),
    7: (0.4, 0.0, 0.4, 0.0),
    9: (0.0, 0.0, 0.5, 0.0),
    10: (0.5, 0.0, 0.2, 0.3),
    12: (0.85, 0.0, -0.2, 0.0),
    14: (0.5, 0.0, 0.2, 0.0),
    15: (-0.2, 0.0, 0.6, 0.0),
    17: (0.0, 0.0, 0.6, -0.2),
    20: (0.0, 0.2, 0.3, 0.3),
    23: (0.0, 0.0, 0.6, -0.2),
    24: (0.0, 0.0, 0.6, -0.3),
    25: (0.4, 0.0, 0.0, 0.7),
    26: (0.0, 0.3, 0.0, 0.7),
}
AR_COEF = 0.85  # frame-to-frame correlation of the latent factors within one video

# FER classes as AU combinations (prototypes of the emotion literature), by lower-case class name.
# The value "asym" raises one mouth corner only (contempt's unilateral AU12/14).
EXPRESSIONS: dict[str, dict[int | str, float]] = {
    "neutral": {},
    "happiness": {6: 0.8, 12: 1.0, 25: 0.5},
    "happy": {6: 0.8, 12: 1.0, 25: 0.5},
    "sadness": {1: 0.8, 4: 0.6, 15: 1.0, 17: 0.4},
    "sad": {1: 0.8, 4: 0.6, 15: 1.0, 17: 0.4},
    "surprise": {1: 1.0, 2: 1.0, 5: 0.8, 25: 0.8, 26: 1.0},
    "fear": {1: 1.0, 2: 0.6, 4: 0.8, 5: 1.0, 20: 0.8, 25: 0.6},
    "disgust": {9: 1.0, 10: 0.8, 15: 0.5, 17: 0.4},
    "anger": {4: 1.0, 5: 0.6, 7: 0.8, 23: 1.0, 24: 0.5},
    "contempt": {14: 0.8, "asym": 0.8},
}


def subject_rng(seed: int, subject: str, purpose: str) -> np.random.Generator:
    """A generator that depends only on (seed, subject, purpose): a subject looks and behaves the same
    whichever other subjects are generated with it."""
    return np.random.default_rng([seed, zlib.crc32(subject.encode()), zlib.crc32(purpose.encode())])


@dataclass(frozen=True)
class SubjectTendencies:
    thresholds: np.ndarray  # [A] latent-score threshold per AU for this subject

    @classmethod
    def sample(cls, rates: np.ndarray, identity_strength: float, rng: np.random.Generator) -> "SubjectTendencies":
        logit = np.log(rates / (1 - rates)) + identity_strength * rng.standard_normal(len(rates))
        own_rates = 1 / (1 + np.exp(-logit))
        inv = NormalDist().inv_cdf
        return cls(np.array([inv(1 - float(p)) for p in own_rates]))


def sample_au_video(
    au_codes: tuple[int, ...], tendencies: SubjectTendencies, frames: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Occurrence [frames, A] (uint8) and drawn intensity [frames, A] (0 where absent) of one video."""
    w = np.array([_LOADINGS[c] for c in au_codes])  # [A, K]
    own = np.sqrt(np.clip(1 - (w**2).sum(1), 0.05, None))  # [A]
    k = len(_FACTORS)
    innov = np.sqrt(1 - AR_COEF**2)
    factors = np.empty((frames, k))
    noise = np.empty((frames, len(au_codes)))
    factors[0] = rng.standard_normal(k)
    noise[0] = rng.standard_normal(len(au_codes))
    for t in range(1, frames):
        factors[t] = AR_COEF * factors[t - 1] + innov * rng.standard_normal(k)
        noise[t] = AR_COEF * noise[t - 1] + innov * rng.standard_normal(len(au_codes))
    score = factors @ w.T + noise * own  # [frames, A], each column ~ N(0, 1)
    excess = score - tendencies.thresholds
    present = (excess > 0).astype(np.uint8)
    intensity = np.where(present, np.clip(0.3 + 0.6 * excess, 0.3, 1.0), 0.0)
    return present, intensity


def expression_aus(class_name: str, rng: np.random.Generator) -> tuple[dict[int, float], float]:
    """AU intensities and mouth asymmetry of one image of a FER class, with per-image variation."""
    proto = EXPRESSIONS[class_name.lower()]
    scale = rng.uniform(0.55, 1.0)  # how strongly this person shows it
    aus: dict[int, float] = {}
    for code, level in proto.items():
        if code == "asym":
            continue
        if rng.random() < 0.9:  # occasionally one AU of the prototype is missing, as in real faces
            aus[int(code)] = float(np.clip(level * scale + rng.normal(0, 0.08), 0.25, 1.0))
    side = 1 if rng.random() < 0.5 else -1
    asym = side * proto.get("asym", 0.0) * scale
    return aus, float(asym)

"""Data validation before training: every new sample is accepted or quarantined with a reason.

Checks, in order (the first that fails gives the reason):
- `undecodable`: the stored pixels are not 28x28 bytes, or the original upload does not decode;
- `blank` / `smudge`: too little ink to be a digit, or ink almost everywhere;
- `duplicate`: the same pixels as an earlier sample (any user) or earlier in this batch;
- `not_digit_like`: far from every digit the model knows (distance to the k-th nearest reference
  embedding above `factor` x the reference set's own 99th percentile) or the stable model's
  prediction is close to uniform (entropy above a threshold);
- `label_conflict`: the stable model is very confident of another class;
- `user_disagreement`: the user's labels disagree with the stable model far more often than
  other users' do (`rate > max(floor, factor x other users' median rate)`), which catches
  shuffled or systematically wrong labels that individual checks miss. The user's remaining
  samples in the batch are quarantined.

Pure: tensors and bytes in, a report out. The caller stores the verdicts.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from inkwell.errors import InkwellError
from inkwell.model import DigitNet
from inkwell.preprocessing import decode_image

UNDECODABLE = "undecodable"
BLANK = "blank"
SMUDGE = "smudge"
DUPLICATE = "duplicate"
NOT_DIGIT_LIKE = "not_digit_like"
LABEL_CONFLICT = "label_conflict"
USER_DISAGREEMENT = "user_disagreement"
REASONS = (
    UNDECODABLE,
    BLANK,
    SMUDGE,
    DUPLICATE,
    NOT_DIGIT_LIKE,
    LABEL_CONFLICT,
    USER_DISAGREEMENT,
)
INK_LEVEL = 64  # a pixel counts as ink above this (of 255)


@dataclass(frozen=True)
class Candidate:
    """A stored sample as validation sees it."""

    sample_id: int
    user_id: str
    label: int
    image: bytes
    pixels: bytes


@dataclass(frozen=True)
class ValidationRules:
    """Thresholds (from `TrainerSettings`)."""

    min_ink_pixels: int = 12
    max_ink_fraction: float = 0.6
    ood_distance_factor: float = 2.0
    ood_max_entropy: float = 2.2
    label_conflict_confidence: float = 0.999
    user_disagreement_floor: float = 0.35
    user_disagreement_factor: float = 3.0
    user_disagreement_min_samples: int = 8


@dataclass
class ValidationReport:
    """Which samples pass, which are quarantined and why, with the numbers behind it."""

    accepted: list[int] = field(default_factory=list)
    quarantined: dict[int, str] = field(default_factory=dict)
    user_disagreement: dict[str, float] = field(default_factory=dict)
    baseline_disagreement: float | None = None
    ood_threshold: float = 0.0

    def counts(self) -> dict[str, int]:
        """Quarantined samples per reason (every reason present, zeros included)."""
        found = Counter(self.quarantined.values())
        return {reason: int(found.get(reason, 0)) for reason in REASONS}


def pixel_hash(pixels: bytes) -> str:
    """Identity of a sample's MNIST-format pixels (catches re-encoded duplicates)."""
    return hashlib.sha256(pixels).hexdigest()


def pixels_to_array(pixels: bytes) -> np.ndarray:
    """784 stored bytes → (28, 28) uint8."""
    return np.frombuffer(pixels, dtype=np.uint8).reshape(28, 28)


class DigitReference:
    """Embeddings of known digits and how far apart digits normally are from each other."""

    def __init__(self, model: DigitNet, images: np.ndarray, *, k: int = 5) -> None:
        if images.shape[0] <= k:
            raise ValueError(f"the reference needs more than k={k} images, got {images.shape[0]}")
        self.k = k
        self.model = model
        self.embeddings = embed(model, images)
        distances = torch.cdist(self.embeddings, self.embeddings)
        distances.fill_diagonal_(float("inf"))  # leave-one-out
        kth = distances.topk(k, dim=1, largest=False).values[:, -1]
        self.typical = float(torch.quantile(kth, 0.99))

    def distance(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Distance of each embedding to its k-th nearest reference digit."""
        return (
            torch.cdist(embeddings, self.embeddings)
            .topk(self.k, dim=1, largest=False)
            .values[:, -1]
        )


@torch.inference_mode()
def embed(model: DigitNet, images: np.ndarray, batch_size: int = 2000) -> torch.Tensor:
    """Penultimate features of uint8 (N, 28, 28) images, in eval mode."""
    was_training = model.training
    model.eval()
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    out = [model.embed(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def disagreement_rates(
    model: DigitNet, users: Sequence[str], labels: np.ndarray, images: np.ndarray
) -> dict[str, float]:
    """Per user: fraction of samples whose label differs from the model's prediction."""
    if not len(users):
        return {}
    model.eval()
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    pred = model(x).argmax(dim=1).numpy()
    wrong: dict[str, list[bool]] = defaultdict(list)
    for user, label, p in zip(users, labels, pred, strict=True):
        wrong[user].append(bool(p != label))
    return {user: float(np.mean(flags)) for user, flags in wrong.items()}


def validate(
    candidates: Sequence[Candidate],
    model: DigitNet,
    reference: DigitReference,
    rules: ValidationRules,
    *,
    known_pixel_hashes: set[str] | None = None,
    other_users_rates: dict[str, float] | None = None,
) -> ValidationReport:
    """Check each candidate; `other_users_rates` are disagreement rates of users seen before."""
    report = ValidationReport(ood_threshold=rules.ood_distance_factor * reference.typical)
    seen = set(known_pixel_hashes or ())
    usable: list[tuple[Candidate, np.ndarray]] = []
    for cand in candidates:
        reason, array = _intrinsic_check(cand, rules)
        if reason is None and array is not None:
            digest = pixel_hash(cand.pixels)
            if digest in seen:
                reason = DUPLICATE
            seen.add(digest)
        if reason is not None:
            report.quarantined[cand.sample_id] = reason
        elif array is not None:
            usable.append((cand, array))
    if not usable:
        return report
    images = np.stack([array for _, array in usable])
    labels = np.array([cand.label for cand, _ in usable], dtype=np.int64)
    with torch.inference_mode():
        model.eval()
        x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        probs = F.softmax(model(x), dim=1)
        features = model.embed(x)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
    distance = reference.distance(features)
    predicted = probs.argmax(dim=1)
    confidence = probs.max(dim=1).values
    wrong: dict[str, list[bool]] = defaultdict(list)
    survivors: list[Candidate] = []
    for i, (cand, _) in enumerate(usable):
        if distance[i] > report.ood_threshold or entropy[i] > rules.ood_max_entropy:
            report.quarantined[cand.sample_id] = NOT_DIGIT_LIKE
            continue
        # a user's disagreement rate counts every digit-like sample, label conflicts included
        disagrees = bool(predicted[i].item() != labels[i])
        wrong[cand.user_id].append(disagrees)
        if disagrees and confidence[i] >= rules.label_conflict_confidence:
            report.quarantined[cand.sample_id] = LABEL_CONFLICT
        else:
            survivors.append(cand)
    rates = {user: float(np.mean(flags)) for user, flags in wrong.items()}
    report.user_disagreement = rates
    flagged = _disagreeing_users(rates, wrong, other_users_rates or {}, rules, report)
    for cand in survivors:
        if cand.user_id in flagged:
            report.quarantined[cand.sample_id] = USER_DISAGREEMENT
        else:
            report.accepted.append(cand.sample_id)
    return report


def _intrinsic_check(
    cand: Candidate, rules: ValidationRules
) -> tuple[str | None, np.ndarray | None]:
    if len(cand.pixels) != 28 * 28 or not 0 <= cand.label <= 9:
        return UNDECODABLE, None
    try:
        decode_image(cand.image)
    except InkwellError:
        return UNDECODABLE, None
    array = pixels_to_array(cand.pixels)
    ink = int((array > INK_LEVEL).sum())
    if ink < rules.min_ink_pixels:
        return BLANK, array
    if ink > rules.max_ink_fraction * array.size:
        return SMUDGE, array
    return None, array


def _disagreeing_users(
    rates: dict[str, float],
    wrong: dict[str, list[bool]],
    history: dict[str, float],
    rules: ValidationRules,
    report: ValidationReport,
) -> set[str]:
    flagged: set[str] = set()
    for user, rate in rates.items():
        if len(wrong[user]) < rules.user_disagreement_min_samples:
            continue
        others = [r for u, r in {**history, **rates}.items() if u != user]
        baseline = float(np.median(others)) if others else None
        threshold = rules.user_disagreement_floor
        if baseline is not None:
            threshold = max(threshold, rules.user_disagreement_factor * baseline)
            report.baseline_disagreement = baseline
        if rate > threshold:
            flagged.add(user)
    return flagged

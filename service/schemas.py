"""Response schemas of the v1 API (`XPublic`: what a client sees)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    """Which model answered: registry name, version, and the variant (stable or canary)."""

    model_name: str
    model_version: str
    variant: str


class DigitPrediction(BaseModel):
    digit: int = Field(ge=0, le=9)
    confidence: float
    probabilities: list[float] = Field(description="P(digit = i) for i = 0..9.")


class PredictionPublic(ModelRef, DigitPrediction):
    """The answer to one image."""


class BatchPredictionPublic(ModelRef):
    """The answers to a batch, in request order; one model version answered all of them."""

    predictions: list[DigitPrediction]


class SampleCreatedPublic(BaseModel):
    sample_id: int
    created: bool = Field(description="False when this repeats an earlier upload.")
    duplicate_of: int | None = Field(
        default=None, description="The earlier sample with identical content from this user."
    )
    label: int
    user_id: str
    state: str


class SampleStatsPublic(BaseModel):
    total: int
    by_state: dict[str, int]
    by_label: dict[str, int]
    by_user: dict[str, int]
    quarantine_reasons: dict[str, int]


class HealthPublic(BaseModel):
    status: str


class ReadyPublic(BaseModel):
    status: str
    model_name: str
    model_version: str
    variant: str


class ChequeCharacterPublic(BaseModel):
    digit: str = Field(pattern=r"^[0-9]$")
    confidence: float = Field(description="Probability of this digit at its best frame.")
    x: list[int] = Field(
        description="[start, end) columns of the digit in the image sent (approximate)."
    )


class ChequeReadingPublic(BaseModel):
    """The courtesy amount read from one image."""

    amount: str = Field(description="The digits of the amount, separators and symbols left out.")
    confidence: float = Field(description="Calibrated probability that `amount` is exactly right.")
    needs_review: bool = Field(description="True: send this cheque to a person.")
    review_threshold: float
    characters: list[ChequeCharacterPublic]
    layout: str = Field(description="field (an amount box) or cheque (a whole cheque).")
    field_box: list[int] | None = Field(
        default=None, description="[x0, y0, x1, y1] of the amount box found on a whole cheque."
    )
    locate_method: str | None = None
    decoder: str
    model_name: str
    model_version: str
    variant: str

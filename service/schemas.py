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
    cheque_model_version: str | None = Field(
        default=None,
        description="The cheque model version this process reads amounts with (its variant's "
        "alias, or stable's); null while none is loaded. The router's cheque rollout reads it.",
    )


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
    reading_id: str | None = Field(
        default=None,
        description="Send it with a reviewed upload (POST /v1/cheques/samples) that corrects "
        "this reading.",
    )


class ChequeSampleCreatedPublic(BaseModel):
    sample_id: int
    created: bool = Field(description="False when this repeats an earlier upload.")
    duplicate_of: int | None = Field(
        default=None, description="The earlier sample with the same image and amount."
    )
    amount: str = Field(description="The corrected amount, digits only.")
    user_id: str
    reading_id: str | None = None
    state: str = Field(description="accepted, or quarantined (see reason).")
    reason: str | None = None


class ChequeSampleStatsPublic(BaseModel):
    total: int
    by_state: dict[str, int]
    by_user: dict[str, int]
    by_length: dict[str, int] = Field(description="Samples by number of digits in the amount.")
    corrections: dict[str, int] = Field(
        description="with_reading: uploads naming a reading; contradicting_reading: of those, "
        "how many changed the amount read."
    )
    quarantine_reasons: dict[str, int]


class ChequeReviewPublic(BaseModel):
    """A reading sent to review that no reviewed upload has corrected yet."""

    reading_id: str
    amount: str
    confidence: float
    model_version: str
    variant: str
    layout: str
    created_at: str
    image: str = Field(description="The image that was read, as a data: URL.")


class ChequeReviewQueuePublic(BaseModel):
    reviews: list[ChequeReviewPublic]

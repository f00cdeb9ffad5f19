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

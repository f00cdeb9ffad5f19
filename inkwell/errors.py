"""The one exception hierarchy for Inkwell's domain errors.

Every error carries a stable machine `code`, a `message` saying what was wrong and how to fix
it, and the HTTP status it maps to (used by the single error map in each web component).
"""

from __future__ import annotations


class InkwellError(Exception):
    """Base class: a domain error with a code, a fix-it message and an HTTP status."""

    code = "inkwell_error"
    status_code = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class DataError(InkwellError):
    """Training or evaluation data is missing, corrupt or inconsistent."""

    code = "data_error"
    status_code = 500


class DataNotFoundError(DataError):
    code = "data_not_found"


class DataCorruptError(DataError):
    code = "data_corrupt"


class InvalidInputError(InkwellError):
    """A client sent something we cannot use (4xx)."""

    code = "invalid_input"
    status_code = 422


class BadRequestError(InvalidInputError):
    """The request itself is malformed (its target, its framing), not just its content."""

    code = "bad_request"
    status_code = 400


class InvalidImageError(InvalidInputError):
    code = "invalid_image"


class ImageTooLargeError(InvalidInputError):
    code = "image_too_large"
    status_code = 413


class NoInkError(InvalidInputError):
    code = "no_ink"


class AmountFieldNotFoundError(InvalidInputError):
    """A whole cheque was sent but its courtesy-amount box could not be located."""

    code = "amount_field_not_found"


class UnsupportedMediaTypeError(InvalidInputError):
    code = "unsupported_media_type"
    status_code = 415


class PayloadTooLargeError(InvalidInputError):
    code = "payload_too_large"
    status_code = 413


class AuthError(InkwellError):
    code = "unauthorized"
    status_code = 401


class ForbiddenError(InkwellError):
    """A valid key asked for something it is not allowed (another user's uploads)."""

    code = "forbidden"
    status_code = 403


class NotFoundError(InkwellError):
    code = "not_found"
    status_code = 404


class ConflictError(InkwellError):
    code = "conflict"
    status_code = 409


class ModelNotFoundError(InkwellError):
    """No model version exists for the requested name/alias/version."""

    code = "model_not_found"
    status_code = 404


class ModelNotReadyError(InkwellError):
    code = "model_not_ready"
    status_code = 503


class ModelOutputError(InkwellError):
    """The model answered with NaN or infinity: a broken model, never a prediction."""

    code = "model_output_invalid"
    status_code = 500


class RegistryUnavailableError(InkwellError):
    code = "registry_unavailable"
    status_code = 503


class DiskFullError(InkwellError):
    """A local disk ran out of space (ENOSPC) while writing: not a registry outage."""

    code = "disk_full"
    status_code = 507


class NothingToTrainError(ConflictError):
    """A retrain was requested but no accepted samples are waiting."""

    code = "nothing_to_train"


class RetryLaterError(InkwellError):
    """A 503 (or 429) the client should retry after `retry_after_s` s (sent as `Retry-After`)."""

    code = "unavailable"
    status_code = 503
    default_retry_after_s = 1

    def __init__(
        self, message: str, *, retry_after_s: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, code=code)
        wait = self.default_retry_after_s if retry_after_s is None else retry_after_s
        self.retry_after_s = max(1, int(wait))


class StoreUnavailableError(RetryLaterError):
    """The sample database cannot be reached or stays busy; the client retries later."""

    code = "store_unavailable"
    default_retry_after_s = 5


class StoreFullError(StoreUnavailableError):
    """The sample database is out of disk space: nothing can be stored until space is freed."""

    code = "store_full"
    status_code = 507
    default_retry_after_s = 60


class RateLimitedError(RetryLaterError):
    """A key went over its rate limit or quota; it may retry after `retry_after_s` seconds."""

    code = "rate_limited"
    status_code = 429


class UpstreamUnavailableError(InkwellError):
    """A service behind the router did not answer (refused, reset or timed out)."""

    code = "upstream_unavailable"
    status_code = 502


class MetricsUnavailableError(InkwellError):
    """Metrics needed for a decision could not be read (Prometheus or /metrics targets down)."""

    code = "metrics_unavailable"
    status_code = 503


class OverloadedError(RetryLaterError):
    """The server sheds this request to stay responsive; the client may retry after a pause."""

    code = "overloaded"


class DeadlineExceededError(OverloadedError):
    """A request waited in a queue past its deadline; answering late would only add load."""

    code = "deadline_exceeded"


class IdempotencyKeyReusedError(InvalidInputError):
    """An idempotency key sent again with a different request than the one it first stored."""

    code = "idempotency_key_reused"

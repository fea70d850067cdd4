"""The whole exception tree. Each error knows its HTTP status and what it concerns."""

from __future__ import annotations


class BalancerError(Exception):
    """Base of every error we turn into a JSON reply."""

    status_code = 500
    openai_type = "server_error"
    openai_code: str | None = None

    def __init__(self, message: str, *, model: str | None = None, worker: str | None = None):
        super().__init__(message)
        self.message = message
        self.model = model
        self.worker = worker
        self.attempts: int | None = None
        """How many workers were tried, when the error ends a forwarded request."""
        self.retry_after: float | None = None
        """Seconds after which trying again may succeed: a `Retry-After` header in the reply."""


class BadRequest(BalancerError):
    status_code = 400
    openai_type = "invalid_request_error"
    openai_code = "invalid_request"


class Unauthorized(BalancerError):
    status_code = 401
    openai_type = "invalid_request_error"
    openai_code = "invalid_api_key"


class Forbidden(BalancerError):
    status_code = 403
    openai_type = "invalid_request_error"
    openai_code = "forbidden"


class NotFound(BalancerError):
    status_code = 404
    openai_type = "invalid_request_error"
    openai_code = "not_found"


class ModelNotFound(NotFound):
    openai_code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(f"The request model({model}) not exist in llm worker manager", model=model)


class EndpointNotServed(NotFound):
    """No worker of the model declares the endpoint (registration field `endpoints`)."""

    openai_code = "endpoint_not_served"

    def __init__(self, model: str, endpoint: str):
        super().__init__(
            f"no worker of model {model} serves {endpoint} (their registrations' endpoints "
            "field leaves it out)",
            model=model,
        )


class WorkerNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("No llm worker to remove.")


class PayloadTooLarge(BalancerError):
    """The request body is over BALANCER_MAX_BODY_BYTES; what is left of it is never read, so
    the reply closes the connection."""

    status_code = 413
    openai_type = "invalid_request_error"
    openai_code = "payload_too_large"


class UnsupportedMediaType(BalancerError):
    status_code = 415
    openai_type = "invalid_request_error"
    openai_code = "unsupported_media_type"


class StoreUnavailable(BalancerError):
    status_code = 503
    openai_code = "store_unavailable"


class NoWorkerAvailable(BalancerError):
    """Nothing can serve the model: all ejected, all at capacity, or retries exhausted."""

    status_code = 503
    openai_code = "no_worker_available"


class DeadlineExceeded(BalancerError):
    """The request used up BALANCER_REQUEST_TIMEOUT before any worker answered."""

    status_code = 504
    openai_code = "request_timeout"


class UpstreamError(BalancerError):
    """A worker failed to give a usable answer."""

    status_code = 502
    openai_code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        worker: str | None = None,
        retryable: bool = False,
        upstream_status: int | None = None,
        reason: str = "invalid_response",
        retry_after: float | None = None,
    ):
        super().__init__(message, model=model, worker=worker)
        self.retryable = retryable
        self.upstream_status = upstream_status
        self.reason = reason
        """A short, bounded label: connect, timeout, reset, too_large, http_<status>,
        invalid_response."""
        self.retry_after = retry_after
        # The caller's own mistake, as the worker judged it, keeps its status: it is relayed.
        if upstream_status is not None and 400 <= upstream_status < 500 and not retryable:
            self.status_code = upstream_status


class UpstreamTimeout(UpstreamError):
    status_code = 504
    openai_code = "upstream_timeout"

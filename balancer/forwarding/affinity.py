"""Which worker holds a stored response of the Responses API.

A worker that answers `POST /v1/responses` keeps the response (its conversation state) under
its id; a later request naming it as `previous_response_id` must reach that worker, which alone
can continue it. The balancer notes each response's worker as the answer passes, and
forgets the oldest notes first (a bounded map: ids are made by clients' traffic).
"""

from __future__ import annotations

from collections import OrderedDict

import orjson

from balancer.forwarding import sse

MAX_REMEMBERED = 100_000
"""Responses whose worker is remembered; about 100 bytes each."""


class ResponseOwners:
    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self.limit = limit
        self._owners: OrderedDict[str, str] = OrderedDict()

    def remember(self, response_id: str, worker_id: str) -> None:
        self._owners[response_id] = worker_id
        self._owners.move_to_end(response_id)
        if len(self._owners) > self.limit:
            self._owners.popitem(last=False)

    def owner(self, response_id: str) -> str | None:
        """The id of the worker that created the response, if this balancer saw it."""
        return self._owners.get(response_id)

    def forget(self, response_id: str) -> None:
        self._owners.pop(response_id, None)

    def __len__(self) -> int:
        return len(self._owners)


def response_id(answer: bytes, *, streamed: bool) -> str | None:
    """The id of the response in an answer, or in a stream's first chunk (its
    `response.created` event holds the response)."""
    if not streamed:
        return _id_of(_document(answer))
    for event in sse.split_events(answer):
        document = sse.event_json(event)
        if isinstance(document, dict) and isinstance(document.get("response"), dict):
            return _id_of(document["response"])
    return None


def _document(data: bytes) -> object:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _id_of(document: object) -> str | None:
    found = document.get("id") if isinstance(document, dict) else None
    return found if isinstance(found, str) and 0 < len(found) <= 200 else None

"""Which worker holds a stored response: noted as answers pass, the oldest forgotten first."""

from __future__ import annotations

from balancer.forwarding import sse
from balancer.forwarding.affinity import ResponseOwners, response_id


def test_the_oldest_responses_are_forgotten_first() -> None:
    owners = ResponseOwners(limit=2)
    owners.remember("r1", "w1")
    owners.remember("r2", "w2")
    owners.remember("r1", "w1")  # seen again: the newest
    owners.remember("r3", "w3")
    assert (owners.owner("r1"), owners.owner("r2"), owners.owner("r3")) == ("w1", None, "w3")
    assert len(owners) == 2


def test_the_id_is_read_from_an_answer_or_a_streams_first_event() -> None:
    assert response_id(b'{"id": "resp_1", "object": "response"}', streamed=False) == "resp_1"
    head = b"event: response.created\n" + sse.json_event(
        {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_2"}}
    )
    assert response_id(head, streamed=True) == "resp_2"
    assert response_id(b"not json", streamed=False) is None
    assert response_id(b'{"id": 3}', streamed=False) is None
    assert response_id(b"data: {}\n\n", streamed=True) is None

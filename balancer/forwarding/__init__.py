"""From a parsed request to a worker's answer, outermost layer first:

- `forwarder.py`: the model's fallbacks, failover between workers, one attempt under a lease;
- `lease.py`, `capacity.py`, `retry_budget.py`: a worker's slot, the queue for slots, the
  budget that stops retry storms;
- `relay.py` (an OpenAI worker's answer passed through, streams included, framed by `sse.py`)
  and `prompt.py` (one prompt to either kind of worker, its text back): what an attempt sends;
- `upstream.py`: one request to one worker, and what its answer means;
- `transport.py`: bytes on the wire, on one shared aiohttp session.
"""

"""Worker registrations: what they are (models), where they are kept (store) and the index."""

from balancer.registry.models import Worker, WorkerSpec, parse_spec
from balancer.registry.registry import Registry
from balancer.registry.store import Store, open_store

__all__ = ["Registry", "Store", "Worker", "WorkerSpec", "open_store", "parse_spec"]

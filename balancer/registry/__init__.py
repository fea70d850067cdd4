"""Worker registrations: what they are (models), where they are kept (store) and the index."""

from balancer.registry.index import ModelOptions, RegistryChanged, WorkerRegistry
from balancer.registry.models import Worker, WorkerSpec, parse_spec
from balancer.registry.store import SchemaTooNew, Store, StoredWorker, open_store

__all__ = [
    "ModelOptions",
    "RegistryChanged",
    "SchemaTooNew",
    "Store",
    "StoredWorker",
    "Worker",
    "WorkerRegistry",
    "WorkerSpec",
    "open_store",
    "parse_spec",
]

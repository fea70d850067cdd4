"""Stand-ins for real workers, for the demo, the tests, the benchmark and docker-compose: a fake
LLM worker (`worker.py`, also `balancer fake-worker`), the demo's fleet of them (`demo.py`), a
transport that answers without sockets (`transport.py`), and child processes on loopback,
stopped by PID (`processes.py`)."""

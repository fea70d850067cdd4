"""Health probes: what a probe sends, the per-worker health state machine, and the scheduler."""

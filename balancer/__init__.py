"""llm-balancer: a health-checked load balancer for LLM inference workers."""

__version__ = "0.1.0"

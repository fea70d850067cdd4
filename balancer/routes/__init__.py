"""HTTP routes: the registry (admin), OperateGPT inference (seed), OpenAI, ops."""

"""Local training (torch): the trainer the agent and ``ftl-bench`` share, and numpy metrics."""

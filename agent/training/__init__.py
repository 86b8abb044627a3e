"""Local training: a plan in, ``(delta, n_samples, metrics)`` out (``local_round``), run in a
child process (``runner``); the trainer the agent and ``ftl-bench`` share; numpy metrics and the
gate. Knows nothing of sync: sync plans, seals and sends."""

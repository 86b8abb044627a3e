"""Grouping instances into series and the durable queue of series waiting for inference."""

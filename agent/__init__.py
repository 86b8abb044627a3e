"""ftl-ct agent."""

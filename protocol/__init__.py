"""ftl-ct protocol."""

"""ftl-ct cloud."""

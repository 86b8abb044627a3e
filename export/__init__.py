"""ftl-ct export."""

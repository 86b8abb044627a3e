"""ftl-ct bench."""

"""Durable storage of received instances: files on disk plus an SQLite index. No networking."""

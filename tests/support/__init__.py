"""Helpers for tests that run real peers (mosquitto, dcmtk, Orthanc) on loopback."""

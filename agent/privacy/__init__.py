"""Differential privacy on the released delta: the mechanism and the ledger of what was spent."""

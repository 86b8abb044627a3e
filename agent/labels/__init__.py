"""Confirmed labels for local training, keyed by Study-, Series- or SOP Instance UID."""

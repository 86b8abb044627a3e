"""The scanner's digital twin: a de-identified, aggregated picture of this agent and its scanner."""

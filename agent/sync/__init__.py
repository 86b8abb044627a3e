"""The agent's side of the federation: the MQTT link and the loop over it (inbox, outbox sender,
training schedule, heartbeat), the round plan, the release of a trained delta, model installs,
and the tables they own (received messages, outbox, training log, model events)."""

"""The agent's side of the federation: MQTT link, rounds, global models, the update outbox."""

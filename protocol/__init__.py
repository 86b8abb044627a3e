"""ftl-ct protocol: what agent and cloud share, defined once.

- ``topics``: MQTT topic names and parsing
- ``envelope``: the signed, size-bounded container (JSON header + safetensors body)
- ``messages``: payload schemas (round announcement, global model, site update)
- ``receipt``: the cloud's signed verdict on one site update (accepted / duplicate / rejected)
- ``twin_state``: the closed, PHI-free twin schema and its validator
- ``codecs``: delta codecs fp32 / fp16 / int8 with documented error bounds
- ``identity``: Ed25519 key pairs on disk, signatures
- ``exchange``: build/open each message kind (the functions agent and cloud call)
- ``mqtt_connection``: broker URLs, TLS, credentials, paho 2.x clients
- ``settings``: typed settings from defaults, TOML, environment, flags
- ``cli``: the command-line contract every program keeps

This package imports nothing at load time, so ``--help`` of every CLI stays fast.
"""

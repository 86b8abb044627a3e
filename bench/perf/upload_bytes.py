"""Bytes one site uploads per round: FTL's head delta vs FedAvg of the whole MobileNetV2.

Both are real ``site_update`` envelopes as an agent seals them
(``protocol.exchange.build_update``: canonical JSON header, Ed25519 signature,
safetensors body), for every codec. FTL sends the delta of the model
directory's head; FedAvg sends every float tensor of the whole network (the
backbone's weights and batch-norm statistics from ``backbone.safetensors`` plus
the same head), as conventional FL trains it end to end. The deltas are random
of a realistic size (their values do not change the byte count).
"""

from __future__ import annotations

import tempfile

import numpy as np
from safetensors.numpy import load_file

from ftlct.bench.perf.measure import goal
from ftlct.protocol.codecs import CODECS


def _sealed_size(identity, delta: dict[str, np.ndarray], codec: str) -> int:
    from ftlct.protocol.exchange import build_update

    data = build_update(
        identity,
        "perf",
        round=1,
        base_version="r0-global-00000000",
        cluster="global",
        n_samples=200,
        delta=delta,
        metrics={"loss": 0.5, "accuracy": 0.7},
        codec=codec,
    )
    return len(data)


def upload_bytes_section(model) -> dict:
    from ftlct.protocol.identity import load_or_create_identity

    rng = np.random.default_rng(0)
    head = {
        k: (rng.standard_normal(v.shape) * 1e-2).astype(np.float32)
        for k, v in model.head_weights().items()
    }
    network = {
        k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32)
        for k, v in load_file(str(model.path / model.manifest["backbone"]["weights"])).items()
        if np.issubdtype(v.dtype, np.floating)
    }
    network.update(head)
    with tempfile.TemporaryDirectory(prefix="ftlct-perf-keys-") as keys:
        identity = load_or_create_identity(keys, "site-perf")
        ftl = {codec: _sealed_size(identity, head, codec) for codec in CODECS}
        fedavg = {codec: _sealed_size(identity, network, codec) for codec in CODECS}
    same_codec = {codec: round(fedavg[codec] / ftl[codec], 1) for codec in CODECS}
    worst = min(same_codec[c] for c in ("fp16", "int8"))
    return {
        "ftl_parameters": int(sum(v.size for v in head.values())),
        "fedavg_parameters": int(sum(v.size for v in network.values())),
        "ftl_envelope_bytes": ftl,
        "fedavg_envelope_bytes": fedavg,
        "fedavg_over_ftl_same_codec": same_codec,
        "fedavg_fp32_over_ftl": {c: round(fedavg["fp32"] / ftl[c], 1) for c in CODECS},
        "goal": goal(
            "bytes",
            round(1 / worst, 5),
            round(1 / 50, 5),
            at_least=False,
            what="FTL / FedAvg sealed update bytes per site per round, same codec "
            "(the worse of fp16 and int8)",
        ),
    }

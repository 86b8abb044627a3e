"""Named float32 tensors: a head, a network's state, a delta. The one ``Weights`` type of ftl-ct.

numpy only; the agent, the cloud's strategies and the bench all pass their
weights as ``{tensor name: array}``, the form safetensors and the wire carry.
"""

from __future__ import annotations

import numpy as np

Weights = dict[str, np.ndarray]

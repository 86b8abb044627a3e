"""What int8 costs the classifier: embedding fidelity over a whole data set, macro-F1 over splits.

One covid-ct test split of ~150 images has a standard error of ~0.035
macro-F1, more than three times the 0.01 the int8 goal allows, so the drop is
measured over many group-aware splits (``holdout_split(0.2, seed k)``) and
reported as the mean of the paired per-split differences with its 95% t
interval (``split_stats.paired_difference``). 30 splits: the paired
differences spread by ~0.02 F1, so 10 splits leave an interval of +-0.013
around a goal of 0.01 (they gave 0.004 where 30 give 0.009 for the same
backbone). The splits share images, so the interval is, if anything, too
narrow. Two deployments, two heads:

- ``int8 sites``: every site of the federation runs the int8 backbone, so its
  head is trained on int8 embeddings; compared with the head trained on fp32
  embeddings scored on fp32. This is the goal's figure.
- ``mixed``: a head trained on fp32 embeddings applied to int8 embeddings (what
  an int8 site would see with a float federation's head; the manifest's
  backbone hash keeps that from happening, so it is shown, not the goal).

The head is the linear head the agent trains (``train_head``, the same seed on
both sides of a pair). Beside it, a direct fidelity figure without split
noise: cosine and relative L2 error of int8 against fp32 embeddings of every
image.
"""

from __future__ import annotations

import numpy as np

from ftlct.bench.split_stats import paired_difference, rounded, summary

SPLITS = 30
TEST_FRACTION = 0.2
HEAD_EPOCHS = 30
HEAD_LR = 3e-3


def fidelity(quantized: np.ndarray, reference: np.ndarray) -> dict:
    """Cosine and relative L2 error of ``quantized`` embeddings against ``reference`` ``[N, D]``."""
    a = np.asarray(quantized, np.float64)
    b = np.asarray(reference, np.float64)
    if a.shape != b.shape or a.ndim != 2 or not len(a):
        raise ValueError(f"embeddings {a.shape} and {b.shape} do not pair up as [N, D]")
    norm_b = np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    cosine = (a * b).sum(1) / (np.maximum(np.linalg.norm(a, axis=1), 1e-12) * norm_b)
    error = np.linalg.norm(a - b, axis=1) / norm_b
    return {
        "images": len(a),
        "cosine_mean": round(float(cosine.mean()), 5),
        "cosine_min": round(float(cosine.min()), 5),
        "cosine_p1": round(float(np.percentile(cosine, 1)), 5),
        "rel_error_mean": round(float(error.mean()), 5),
        "rel_error_max": round(float(error.max()), 5),
    }


def _linear_head(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, seed: int):
    from ftlct.agent.training.local_training import LocalTrainConfig, train_head
    from ftlct.export.heads import head_to_arrays, make_head

    config = LocalTrainConfig(epochs=HEAD_EPOCHS, lr=HEAD_LR, val_fraction=0.0, seed=seed)
    start = head_to_arrays(make_head("linear", n_classes, embedding_dim=embeddings.shape[1]))
    return train_head(start, embeddings, labels, n_classes, config).weights


def multi_split_drop(
    reference: np.ndarray,
    quantized: np.ndarray,
    labels: np.ndarray,
    groups: tuple[str, ...],
    n_splits: int = SPLITS,
) -> dict:
    """Macro-F1 of fp32 minus int8 on ``n_splits`` group splits of the same images, paired."""
    import torch

    from ftlct.bench.splits import holdout_split
    from ftlct.export.head_onnx import numpy_head_logits
    from ftlct.export.metrics import classification_metrics

    labels = np.asarray(labels)
    if len(reference) != len(labels) or reference.shape != quantized.shape:
        raise ValueError(
            f"{len(labels)} labels for embeddings {reference.shape} and {quantized.shape}"
        )
    if n_splits < 2:
        raise ValueError(f"a paired interval needs >= 2 splits, got {n_splits}")
    n_classes = int(labels.max()) + 1
    f1 = {"fp32": [], "int8 sites": [], "mixed": []}
    sizes = []
    for seed in range(n_splits):
        train, test = holdout_split(labels, groups, TEST_FRACTION, seed)
        sizes.append(len(test))

        def score(head, embeddings, test=test):
            predicted = numpy_head_logits(head, embeddings[test]).argmax(1)
            return classification_metrics(labels[test], predicted, n_classes).f1

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the head's initial weights: the same for both sides
            fp32_head = _linear_head(reference[train], labels[train], n_classes, seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            int8_head = _linear_head(quantized[train], labels[train], n_classes, seed)
        f1["fp32"].append(score(fp32_head, reference))
        f1["int8 sites"].append(score(int8_head, quantized))
        f1["mixed"].append(score(fp32_head, quantized))
    return {
        "splits": f"holdout_split({TEST_FRACTION}, seeds 0-{n_splits - 1}), "
        f"{min(sizes)}-{max(sizes)} test images each",
        "head": f"linear, train_head {HEAD_EPOCHS} epochs lr {HEAD_LR}, seed = split",
        "f1": {name: rounded(summary(values)) for name, values in f1.items()},
        "drop": {
            name: rounded(paired_difference(f1["fp32"], f1[name]))
            for name in ("int8 sites", "mixed")
        },
        "per_split": {name: [round(v, 4) for v in values] for name, values in f1.items()},
    }

"""The multi-split part of ``report.md`` and its plots (from ``results.json``'s ``multi_split``)."""

from __future__ import annotations

from pathlib import Path

TABLE_METRICS = (
    ("f1", "macro-F1 (last round)"),
    ("f1_best_validated", "macro-F1 (best validated round)"),
    ("accuracy", "accuracy"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("convergence_time_s", "convergence (s)"),
    ("time_to_target_s", "time to 0.9 x central (s)"),
)
PAIRED_METRICS = (("f1", "macro-F1"), ("f1_best_validated", "best-validated F1"))


def _cell(stats: dict | None, digits: int = 3) -> str:
    """``mean ± se [low, high]`` (and how many splits lacked the value)."""
    if not stats or stats.get("mean") is None:
        return "—"
    text = f"{stats['mean']:.{digits}f}"
    if stats.get("se") is not None:
        low, high = stats["ci95"]
        text += f" ± {stats['se']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    if stats.get("missing"):
        text += f" ({stats['missing']} never)"
    return text


def summary_table(results: dict) -> str:
    multi = results["multi_split"]
    rows = [
        "| method | " + " | ".join(label for _, label in TABLE_METRICS) + " |",
        "| --- |" + " ---: |" * len(TABLE_METRICS),
    ]
    for method, stats in multi["summary"].items():
        cells = [_cell(stats.get(key), 1 if key.endswith("_s") else 3) for key, _ in TABLE_METRICS]
        cells[0] = f"**{cells[0]}**"
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def paired_table(results: dict) -> str:
    rows = [
        "| difference | "
        + " | ".join(f"{label} mean ± SE [95% CI]" for _, label in PAIRED_METRICS)
        + " | F1 wins / losses | interval excludes 0 |",
        "| --- |" + " ---: |" * len(PAIRED_METRICS) + " ---: | --- |",
    ]
    for name, diff in results["multi_split"]["paired"].items():
        f1 = diff.get("f1", {})
        cells = [_cell(diff.get(key)) for key, _ in PAIRED_METRICS]
        verdict = "yes" if f1.get("excludes_zero") else "**no**"
        rows.append(
            f"| {name} | " + " | ".join(cells) + f" | {f1.get('wins', 0)} / "
            f"{f1.get('losses', 0)} | {verdict} |"
        )
    return "\n".join(rows)


def per_split_table(results: dict) -> str:
    multi = results["multi_split"]
    methods = list(multi["summary"])
    rows = [
        "| seed | " + " | ".join(methods) + " |",
        "| ---: |" + " ---: |" * len(methods),
    ]
    for split in multi["per_split"]:
        rows.append(
            f"| {split['seed']} | "
            + " | ".join(f"{split['methods'][m]['f1']:.3f}" for m in methods)
            + " |"
        )
    return "\n".join(rows)


def _size(value: float | None) -> str:
    if value is None:
        return "— (data pooled)"
    if value >= 1024 * 1024:
        return f"{value / 1024 / 1024:.2f} MiB"
    return f"{value / 1024:.1f} KiB" if value >= 1024 else f"{value:.0f} B"


def cost_table(results: dict) -> str:
    """What each method sends and how soon it reaches 0.9 x central, over the splits."""
    multi = results["multi_split"]
    n = multi["n_splits"]
    rows = [
        "| method | rounds | bytes up per site per round | bytes up per site, whole run "
        "| rounds to 0.9 x central (mean over the splits reaching it) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for method, stats in multi["summary"].items():
        rounds = max(len(s["history_f1"][method]) for s in multi["per_split"])
        per_round = (stats.get("bytes_up_per_round") or {}).get("mean")
        whole = None if per_round is None else per_round * rounds
        reach = stats.get("rounds_to_target") or {}
        reached = reach.get("n", 0)
        mean = f"{reach['mean']:.1f}" if reach.get("mean") is not None else "never"
        rows.append(
            f"| {method} | {rounds} | {_size(per_round)} | {_size(whole)} "
            f"| {mean} ({reached}/{n} splits) |"
        )
    return "\n".join(rows)


def split_section(results: dict) -> list[str]:
    multi = results["multi_split"]
    seeds = multi["seeds"]
    return [
        f"## Over {multi['n_splits']} splits (seeds {seeds[0]}-{seeds[-1]})",
        "",
        "Each split has its own test split, site partition and seed; the scanners are the "
        "sites'. Per method: mean ± standard error [95% t interval] over the splits. "
        f"Settings were chosen on: {multi['chosen_on'] or 'not recorded'}.",
        "",
        summary_table(results),
        "",
        "Paired differences, split by split (same test images, sites and scanners):",
        "",
        paired_table(results),
        "",
        "Macro-F1 of every split:",
        "",
        per_split_table(results),
        "",
        "Bytes and rounds:",
        "",
        cost_table(results),
        "",
    ]


def write_split_plots(results: dict, out: Path, colours: dict) -> list[str]:
    """``f1_by_split.png`` (every split's F1 per method) and ``f1_vs_round_splits.png`` (mean ± SE)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    multi = results["multi_split"]
    methods = list(multi["summary"])
    per_split = multi["per_split"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(methods), 4.2))
    values = [[s["methods"][m]["f1"] for s in per_split] for m in methods]
    ax.boxplot(values, showfliers=False, widths=0.5)
    for index, column in enumerate(values, start=1):
        jitter = np.linspace(-0.12, 0.12, len(column)) if len(column) > 1 else [0.0]
        ax.scatter(index + np.asarray(jitter), column, s=14, color=colours.get(methods[index - 1]))
    ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20)
    ax.set_ylabel("macro-F1 on the test views")
    ax.set_title(f"{multi['n_splits']} splits: one point per split")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out / "f1_by_split.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method in methods:
        curves = [s["history_f1"][method] for s in per_split]
        rounds = min(len(c) for c in curves)
        if not rounds:
            continue
        matrix = np.array([c[:rounds] for c in curves])
        mean = matrix.mean(axis=0)
        se = matrix.std(axis=0, ddof=1) / np.sqrt(len(matrix)) if len(matrix) > 1 else 0 * mean
        x = np.arange(1, rounds + 1)
        if rounds == 1:  # a one-round method (the closed-form head): a point, not a line
            ax.errorbar(
                x, mean, yerr=se, fmt="D", capsize=4, color=colours.get(method), label=method
            )
            continue
        ax.plot(x, mean, color=colours.get(method), label=method)
        ax.fill_between(x, mean - se, mean + se, color=colours.get(method), alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("macro-F1 (mean ± SE over splits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "f1_vs_round_splits.png", dpi=120)
    plt.close(fig)
    return ["f1_by_split.png", "f1_vs_round_splits.png"]

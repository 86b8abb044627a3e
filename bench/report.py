"""``report.md`` and the PNG plots, from ``results.json`` alone (so they can be redrawn later)."""

from __future__ import annotations

import json
from pathlib import Path

LABELS = {
    "ftl": "FTL (frozen backbone, federated head)",
    "ftl_closed_form": "FTL closed form (head solved from site statistics, 1 round)",
    "fedavg": "FedAvg (ImageNet backbone, last blocks + head fine-tuned)",
    "cfl": "CFL (ImageNet backbone, last blocks + head fine-tuned, clustered)",
    "fedavg_cnn": "FedAvg (whole SmallCnn from random init)",
    "cfl_cnn": "CFL (whole SmallCnn from random init, clustered)",
    "central": "central (FTL model, pooled data)",
    "local": "local (FTL model, each site alone; mean)",
}
COLOURS = {
    "ftl": "C0",
    "ftl_closed_form": "C4",
    "fedavg": "C1",
    "cfl": "C2",
    "fedavg_cnn": "C3",
    "cfl_cnn": "C8",
    "central": "C7",
    "local": "C5",
}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _bytes(value) -> str:
    if value is None:
        return "— (data pooled)"
    if value >= 1024 * 1024:
        return f"{value / 1024 / 1024:.2f} MiB"
    if value >= 1024:
        return f"{value / 1024:.1f} KiB"
    return f"{value} B"


def _which_splits(results: dict) -> str:
    multi = results.get("multi_split")
    if not multi:
        return f"seed {results['seed']}"
    return f"mean over {multi['n_splits']} splits (seeds {multi['seeds'][0]}-{multi['seeds'][-1]})"


# --------------------------------------------------------------------------- plots


def write_plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    files = []
    methods = results["methods"]
    for axis, name, label in (
        ("round", "f1_vs_round.png", "round"),
        ("elapsed_s", "f1_vs_time.png", "simulated wall time (s, log scale)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for method, data in methods.items():
            history = data["history"]
            if not history:
                continue
            style = {"central": "--", "local": "--", "cfl": "-.", "cfl_cnn": "-."}.get(method, "-")
            ax.plot(
                [h[axis] for h in history],
                [h["f1"] for h in history],
                style,
                color=COLOURS.get(method),
                label=LABELS.get(method, method),
                marker="." if len(history) <= 40 else None,
            )
        if results.get("target_f1"):
            ax.axhline(
                results["target_f1"], color="grey", lw=0.8, ls=":", label="target (0.9 x central)"
            )
        if axis == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if axis == "elapsed_s":
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        ax.set_xlabel(label)
        ax.set_ylabel("macro-F1 on the test views")
        ax.set_title(
            f"{Path(results['dataset']['path']).name}: {results['sites']} sites, {_which_splits(results)}"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        files.append(name)

    classes = results["dataset"]["classes"]
    for method, data in methods.items():
        matrix = data["confusion_matrix"]
        fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(classes), 1.0 + 0.8 * len(classes)))
        ax.imshow(matrix, cmap="Blues")
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{method}: F1 {data['f1']:.3f}", fontsize=10)
        fig.tight_layout()
        name = f"confusion_{method}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


# --------------------------------------------------------------------------- markdown


def method_table(results: dict) -> str:
    rows = [
        "| method | accuracy | precision | recall | macro-F1 | best validated F1 | convergence time (s) / round | time to target (s) / rounds | bytes up per site per round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, m in results["methods"].items():
        rows.append(
            f"| {method} | {_fmt(m['accuracy'])} | {_fmt(m['precision'])} | {_fmt(m['recall'])} "
            f"| **{_fmt(m['f1'])}** | {_fmt(m.get('f1_best_validated'))} "
            f"| {_fmt(m['convergence_time_s'], 1)} / {_fmt(m['convergence_round'])} "
            f"| {_fmt(m['time_to_target_s'], 1)} / {_fmt(m['rounds_to_target'])} "
            f"| {_bytes(m['bytes_up_per_round'])} |"
        )
    return "\n".join(rows)


def verdict(results: dict) -> list[str]:
    """Plain sentences comparing FTL with the conventional baselines, from the numbers."""
    methods = results["methods"]
    ftl = methods.get("ftl")
    if not ftl:
        return []
    lines = []
    for other in ("fedavg", "cfl", "fedavg_cnn", "cfl_cnn"):
        if other not in methods:
            continue
        o = methods[other]
        better = ftl["f1"] >= o["f1"]
        lines.append(
            f"- FTL macro-F1 {ftl['f1']:.3f} vs {other} {o['f1']:.3f}: "
            f"FTL is {'at least as good' if better else 'WORSE'} ({ftl['f1'] - o['f1']:+.3f})."
        )
    rounds = results["rounds"]
    for name, m in methods.items():
        if m.get("convergence_round") is not None and m["convergence_round"] >= rounds - 1:
            lines.append(
                f"- {name} was still improving at the end (best F1 within 0.01 only from round "
                f"{m['convergence_round']} of {rounds}): its convergence time is a lower bound."
            )
    if "fedavg" in methods:
        f, o = ftl["convergence_time_s"], methods["fedavg"]["convergence_time_s"]
        if f is not None and o is not None:
            lines.append(
                f"- Convergence time FTL {f:.1f} s vs fedavg {o:.1f} s: "
                f"FTL is {'faster' if f < o else 'NOT faster'}"
                + (f" ({o / f:.1f}x)." if f > 0 and f < o else ".")
            )
    return lines


def settings_block(results: dict) -> str:
    s = results["settings"]
    ftl, net = s["ftl"], s["network"]
    return "\n".join(
        [
            f"- data `{results['dataset']['path']}`: {results['dataset']['n']} images, classes "
            f"{', '.join(results['dataset']['classes'])}, {results['dataset']['n_groups']} groups",
            f"- test split {s['test_fraction']:.0%} stratified and group-aware: "
            f"{results['dataset']['n_test']} images ({results['dataset']['test_class_counts']}); each is "
            f"scored through every site's scanner ({results['dataset']['test_views']} test views)",
            f"- {results['sites']} sites, Dirichlet label skew alpha {s['alpha']}, scanner set `{s['scanners']}`; "
            f"{results['rounds']} rounds; {_which_splits(results)}",
            f"- input {results['model']['input_size']} px for every method; preprocessing "
            f"`ftlct.export.preprocessing` (grey windows: {s['grey_windows'] or 'identity'})",
            f"- FTL: backbone `{ftl.get('backbone', 'mobilenet_v2')}` (taps {ftl.get('taps') or 'default'}), "
            f"head `{ftl['head']}`, {ftl['epochs']} local epochs, "
            f"{ftl['optimizer']} lr {ftl['lr']} wd {ftl['weight_decay']}, batch {ftl['batch_size']}, "
            f"FedProx mu {ftl['fedprox_mu']}, class weighting {ftl['class_weighting']}, "
            f"server momentum {ftl.get('server_momentum', 0.0)} lr {ftl.get('server_lr', 1.0)}, "
            f"{ftl['jitter_views']} jittered views per training image",
            f"- FedAvg/CFL: the ImageNet backbone from stage {s.get('finetune', {}).get('first_block', '—')} "
            f"on, plus a head, fine-tuned ({s.get('finetune', {}).get('epochs', '—')} local epoch, lr "
            f"{s.get('finetune', {}).get('lr', '—')}), one cached view per image per round; "
            f"held-out selection share {s.get('selection_fraction', 0)}",
            f"- FedAvg/CFL CNN rows: SmallCnn from random init, {net['epochs']} local epochs, {net['optimizer']} lr "
            f"{net['lr']} wd {net['weight_decay']}, batch {net['batch_size']}, FedProx mu {net['fedprox_mu']}, "
            f"class weighting {net['class_weighting']}, flips+shifts{', acquisition jitter' if net['jitter'] else ''}",
            f"- CFL: {', '.join(f'{k} {v}' for k, v in s['cfl'].items())}",
            f"- local validation fraction {s['val_fraction']}; transport `{s['transport']}`; "
            f"threads {s['threads'] or 'default'}",
        ]
    )


def write_report(results: dict, out: Path, command: str, levers: dict | None = None) -> Path:
    out = Path(out)
    figures = write_plots(results, out)
    multi = results.get("multi_split")
    split_lines: list[str] = []
    if multi:
        from ftlct.bench.split_report import split_section, write_split_plots

        figures = write_split_plots(results, out, COLOURS) + figures
        split_lines = split_section(results)
    run = results["run"]
    lines = [
        "# FTL vs FedAvg vs CFL on non-IID CT data",
        "",
        f"Made by `{command}` in {run['wall_s']:.0f} s on {run['cpus']} CPU cores "
        f"({run['finished']}). The cores were shared with other jobs: times are pessimistic.",
        "",
        *split_lines,
        "## Results" + (f" (means over the {multi['n_splits']} splits)" if multi else ""),
        "",
        method_table(results),
        "",
        f"Target F1 (0.9 x central): {_fmt(results.get('target_f1'))}.",
        "",
        *verdict(results),
        "",
        "How to read it: accuracy, precision, recall and F1 are macro averages over the pooled "
        "(site scanner, test image) views, each site scored with the model it would use (its "
        "cluster's for CFL); `local` is the mean over sites of each site's own model. Times are "
        "simulated wall time of a federation whose sites train in parallel: a round costs its "
        "slowest site plus aggregation; test scoring is not counted; FTL and the references "
        "start after the onnxruntime embedding of the site's training views. Convergence: first "
        "round within 0.01 F1 of the method's best; target: first round at 0.9 x central's F1. "
        "Bytes: the signed `site_update` envelope (`ftlct.protocol.exchange.build_update`, fp32).",
        "",
        "## Settings",
        "",
        settings_block(results),
        "",
        "## How the comparison is set up",
        "",
        "- One partition, one set of scanners, one preprocessing, one seed for every method. "
        "The test split (stratified, group-aware) never reaches a site: the run checks the "
        "indices, files and groups behind every training array before training, and writes "
        "`split.json` (test files, each site's files).",
        "- Test images are scored through every site's scanner, each with the model that site "
        "would run, so a model must work on every scanner of the federation, not just one.",
        "- `ftl`: frozen ImageNet backbone (`backbone.onnx` of an `ftl-export` model "
        "directory, pooled multi-layer embedding), embeddings from onnxruntime as the agent "
        "computes them, head trained with the agent's trainer "
        "(`ftlct.agent.training.train_head`), aggregated by the cloud's `ftl` strategy. "
        "`ftl_closed_form`: sites send head statistics once, the cloud's `closed_form` strategy "
        "solves the head. `fedavg`/`cfl`: conventional FL from the same ImageNet backbone: its "
        "last stages and a head fine-tuned end to end (the frozen stages' outputs cached per "
        "view), the cloud's `fedavg`/`cfl` strategies. `fedavg_cnn`/`cfl_cnn`: a small CNN "
        "(4 conv blocks, ~100k parameters) from random initialisation.",
        "- Every family defends against scanner shortcuts with the same acquisition jitter "
        "ranges: FTL sites embed jittered copies of their images once; fine-tuning sites train "
        "on one of those cached copies per image per round; the CNN gets fresh jitter (plus "
        "flips and shifts) every batch.",
        "- Headline figures are those of the last round; `best (validated)` is the round whose "
        "models scored best on the sites' held-out images (federated validation, "
        "`cloud/model_selection.py`), scored on the test views: selection never sees the test split.",
        f"- Settings were chosen on: {results['settings'].get('chosen_on') or 'not recorded'}.",
        "",
        "## Sites (simulated scanners)",
        "",
        "| site | scanner | training images | per class |",
        "| --- | --- | ---: | --- |",
        *[
            f"| {d['site']} | {d['scanner']['name']}: {d['scanner_summary']} | {d['n_train']} | {d['class_counts']} |"
            for d in results["site_details"]
        ],
        "",
        "Each site's images pass through its scanner profile (noise = dose, blur = softer "
        "reconstruction kernel, resolution = coarser matrix, contrast/gamma = display curve) "
        "before its agent sees them: a simulation of different scanners (`bench/scanners.py`).",
        "",
    ]
    cfl = results["methods"].get("cfl", {}).get("federation")
    if cfl:
        lines += [
            "## CFL clusters",
            "",
            f"Final clusters: {', '.join(cfl['clusters'])}; membership {cfl['membership'] or 'all global'}; "
            f"splits: {json.dumps(cfl['splits']) if cfl['splits'] else 'none'}.",
            "",
        ]
    if levers:
        from ftlct.bench.levers import levers_markdown

        lines += ["## Levers tried", "", levers_markdown(levers), ""]
    lines += ["## Plots", ""] + [f"![{f}]({f})" for f in figures] + [""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path

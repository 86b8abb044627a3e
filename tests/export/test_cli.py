import subprocess
import sys

import pytest

from tests.support.paths import CQ500


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "ftlct.export", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("command", [[], ["build"], ["verify"], ["fetch-weights"], ["info"]])
def test_every_command_has_help(command):
    result = _run(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["build", "--bogus"], "No such option"),
        (["build", "--out", "x", "--labels", "only"], "--labels needs at least two"),
        (["build", "--out", "x", "--head", "cnn"], "--head must be linear or mlp"),
        (["build", "--out", "x", "--input-size", "8"], "--input-size"),
        (["build", "--out", "x", "--weights", "/nonexistent.pth"], "weights file not found"),
        (["build", "--out", "x", "--backbone", "resnet50"], "--backbone must be one of"),
        (["build", "--out", "x", "--taps", "ten"], "--taps takes comma-separated"),
        (["build", "--out", "x", "--taps", "13,10"], "taps must be increasing"),
        (["build", "--out", "x", "--taps", "10,99"], "taps must be increasing"),
        (["build", "--out", "x", "--pooling", "median"], "pooling must be"),
        (["fetch-weights", "--backbone", "vgg"], "unknown backbone"),
        (["verify", "/nonexistent"], "not a model directory"),
        (["info", "/nonexistent"], "not a model directory"),
        (["no-such-command"], "No such command"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(args, needle):
    result = _run(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ftl-export: error:") and needle in lines[0]


def test_build_then_verify_from_the_command_line(tmp_path, imagenet_weights):
    out = tmp_path / "model"
    built = _run(
        "build",
        "--out",
        str(out),
        "--weights",
        str(imagenet_weights),
        "--labels",
        "a,b,c",
        "--head",
        "mlp",
    )
    assert built.returncode == 0, built.stderr
    samples = ["--sample", str(CQ500 / "CT000050.dcm")] if CQ500.exists() else []
    verified = _run("verify", str(out), *samples)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "FAIL" not in verified.stdout
    (out / "head.onnx").write_bytes(b"tampered")
    failed = _run("verify", str(out))
    assert failed.returncode == 1
    assert "head.onnx: sha256 differs" in failed.stderr

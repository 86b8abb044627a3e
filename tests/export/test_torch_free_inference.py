import subprocess
import sys


def test_edge_modules_do_not_import_torch():
    """The agent's inference path (model dir, preprocessing, head swap) must run without torch."""
    code = (
        "import sys\n"
        "import ftlct.export.model_dir, ftlct.export.head_onnx, ftlct.export.preprocessing\n"
        "import ftlct.export.files\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""

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


def test_serving_a_model_does_not_import_onnx():
    """onnx (~20 MB resident) is needed to *write* a head, not to serve one."""
    code = (
        "import sys\n"
        "import ftlct.agent.service, ftlct.agent.cli\n"
        "from ftlct.export.head_onnx import head_onnx_bytes, numpy_head_logits\n"
        "before = 'onnx' in sys.modules\n"
        "import numpy as np\n"
        "head_onnx_bytes({'dense.0.weight': np.zeros((2, 4)), 'dense.0.bias': np.zeros(2)})\n"
        "print(before, 'onnx' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "True"]

"""House rule: the service never imports torch or training (training imports the service)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_service_does_not_import_torch_or_training() -> None:
    code = (
        "import sys, pkgutil, importlib, service\n"
        "for m in pkgutil.walk_packages(service.__path__, 'service.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules\n"
        "             if n == 'torch' or n.startswith(('torch.', 'training')))\n"
        "print(','.join(bad))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""

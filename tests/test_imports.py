"""Importing the package has no side effects: no environment change, no torch for the config, no import cycle."""
import os
import subprocess
import sys


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_is_cheap_and_changes_nothing():
    code = ("import os, sys, dsv3_edu, dsv3_edu.config; "
            "print('torch' in sys.modules, 'TRITON_INTERPRET' in os.environ)")
    assert _run(code) == "False False"


def test_model_import_leaves_environment_alone():
    code = "import os, dsv3_edu.model, dsv3_edu.train, dsv3_edu.fp8; print('TRITON_INTERPRET' in os.environ)"
    assert _run(code) == "False"


def test_balance_does_not_import_the_model():
    """model.moe uses balance's formulas; balance must not need the model back (no import cycle)."""
    code = "import sys, dsv3_edu.balance; print(any(m.startswith('dsv3_edu.model') for m in sys.modules))"
    assert _run(code) == "False"


def test_only_viz_imports_matplotlib():
    """The library (trainer, model, parallel workers, FP8) computes; only dsv3_edu.viz draws."""
    code = ("import sys, dsv3_edu.train, dsv3_edu.experiments, dsv3_edu.balance_sim, dsv3_edu.fp8, "
            "dsv3_edu.parallel.ep, dsv3_edu.parallel.pipeline, dsv3_edu.generate, dsv3_edu.accounting; "
            "print('matplotlib' in sys.modules)")
    assert _run(code) == "False"

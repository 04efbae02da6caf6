"""DESIGN rule 1: the low layers import neither the engine nor UI/plotting libraries."""

import subprocess
import sys


def test_spec_cost_routing_do_not_import_simpy_streamlit_matplotlib():
    code = ("import sys; import moesim.spec, moesim.cost.compute, moesim.cost.memory, moesim.routing, "
            "moesim.network, moesim.io.scenario; "
            "bad = sorted(m for m in ('simpy', 'streamlit', 'matplotlib', 'torch', 'triton') if m in sys.modules); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_import_moesim_needs_no_torch():
    code = "import sys, moesim; sys.exit(1 if 'torch' in sys.modules or 'triton' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

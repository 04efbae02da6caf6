"""`moesim dashboard`: serve the Streamlit app of app/ (a source checkout's; it is not part of the wheel).

The process becomes `python -m streamlit run app/main.py` (exec, so that stopping it stops the server: no
orphan), headless, bound to 127.0.0.1 unless the caller names another address, with the repository root on
PYTHONPATH (the pages import `app.common`) and the cost limits of one request in the environment (app.common
reads them)."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

from moesim.spec.errors import SpecError, Verbatim

ROOT = Path(__file__).resolve().parents[1]
APP_MAIN = ROOT / "app" / "main.py"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501
MAX_UPLOAD_MB = 64  # Streamlit's own limit on one upload; app.common checks each kind of file tighter
# The cost guard's limits of one request (app.common.cost_limits reads them): --max-wall-s / --max-memory-GiB pass
# them in these variables; a web request should not run for long
MAX_WALL_ENV = "MOESIM_DASHBOARD_MAX_WALL_S"
MAX_MEMORY_ENV = "MOESIM_DASHBOARD_MAX_MEMORY_GIB"
DEFAULT_MAX_WALL_S = 60.0  # without --max-wall-s


def streamlit_command(host: str, port: int, app_main: Path = APP_MAIN) -> list[str]:
    """The server's command line. Tracebacks stay in the server's log (client.showErrorDetails none): the
    pages show moesim's one-line errors themselves."""
    return [sys.executable, "-m", "streamlit", "run", str(app_main),
            "--server.headless", "true", "--server.address", host, "--server.port", str(port),
            "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--browser.gatherUsageStats", "false",
            "--client.showErrorDetails", "none", "--client.toolbarMode", "minimal",
            "--server.fileWatcherType", "none", "--global.developmentMode", "false"]


def dashboard_environment(max_wall_s: float | None, max_memory_GiB: float | None,
                          base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    for name, value in ((MAX_WALL_ENV, max_wall_s), (MAX_MEMORY_ENV, max_memory_GiB)):
        if value is not None:
            env[name] = repr(float(value))
    return env


def check_arguments(host: str, port: int, max_wall_s: float | None, max_memory_GiB: float | None) -> None:
    """Every refusal before the server starts, as one SpecError naming the flag."""
    if not host.strip():
        raise SpecError("--host", host, "an address to bind to, e.g. 127.0.0.1 (this machine only) or 0.0.0.0")
    if not 1 <= port <= 65535:
        raise SpecError("--port", port, "a TCP port in 1..65535")
    for flag, value in (("--max-wall-s", max_wall_s), ("--max-memory-GiB", max_memory_GiB)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise SpecError(flag, value, "a finite number > 0")
    if importlib.util.find_spec("streamlit") is None:
        raise SpecError("dashboard", Verbatim("Streamlit is not installed"),
                        "Streamlit: pip install 'moesim[app]'")
    if not APP_MAIN.is_file():
        raise SpecError("dashboard", str(APP_MAIN), "the app/ directory of a moesim source checkout (the "
                                                    "dashboard is not part of the installed package)")


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, max_wall_s: float | None = None,
          max_memory_GiB: float | None = None) -> None:
    """Replace this process by the Streamlit server (returns only by raising SpecError)."""
    check_arguments(host, port, max_wall_s, max_memory_GiB)
    command = streamlit_command(host, port)
    print(f"moesim dashboard: http://{host}:{port}  (Ctrl+C stops it)", file=sys.stderr, flush=True)
    os.execve(sys.executable, command, dashboard_environment(max_wall_s, max_memory_GiB))

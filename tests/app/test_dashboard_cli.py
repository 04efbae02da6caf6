"""`moesim dashboard`: the server's command line (headless, 127.0.0.1 unless --host), its environment, and
one-line refusals before anything starts."""

import os

import pytest

from moesim import dashboard
from moesim.cli import _main


@pytest.fixture
def launched(monkeypatch):
    """What the command would exec, instead of exec'ing it."""
    calls = []
    monkeypatch.setattr(dashboard.os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
    return calls


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_defaults_local_and_headless(launched):
    assert _main(["dashboard"]) == 1  # execve returned: it cannot, unless (as here) it was replaced
    [(path, argv, env)] = launched
    assert argv[1:5] == ["-m", "streamlit", "run", str(dashboard.APP_MAIN)]
    assert flag(argv, "--server.address") == "127.0.0.1" and flag(argv, "--server.port") == "8501"
    assert flag(argv, "--server.headless") == "true" and flag(argv, "--browser.gatherUsageStats") == "false"
    assert flag(argv, "--client.showErrorDetails") == "none"  # no tracebacks in the browser
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(dashboard.ROOT)  # pages import app.common
    assert dashboard.MAX_WALL_ENV not in env or env[dashboard.MAX_WALL_ENV] == os.environ.get(dashboard.MAX_WALL_ENV)


def test_host_port_and_limits(launched):
    _main(["dashboard", "--host", "0.0.0.0", "--port", "9000", "--max-wall-s", "5", "--max-memory-GiB", "2"])
    [(_, argv, env)] = launched
    assert flag(argv, "--server.address") == "0.0.0.0" and flag(argv, "--server.port") == "9000"
    assert float(env[dashboard.MAX_WALL_ENV]) == 5.0 and float(env[dashboard.MAX_MEMORY_ENV]) == 2.0


@pytest.mark.parametrize("args, line", [
    (["--port", "0"], "moesim: error: --port: got 0; expected a TCP port in 1..65535"),
    (["--port", "70000"], "moesim: error: --port: got 70000; expected a TCP port in 1..65535"),
    (["--host", " "], "moesim: error: --host: got ' '; expected an address to bind to"),
    (["--max-wall-s", "nan"], "moesim: error: --max-wall-s: got nan; expected a finite number > 0"),
    (["--max-memory-GiB", "-1"], "moesim: error: --max-memory-GiB: got -1.0; expected a finite number > 0"),
])
def test_bad_flags_one_line(launched, capsys, args, line):
    assert _main(["dashboard", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1
    assert not launched


def test_without_streamlit_says_how_to_install(launched, capsys, monkeypatch):
    real = dashboard.importlib.util.find_spec
    monkeypatch.setattr(dashboard.importlib.util, "find_spec",
                        lambda name, *a: None if name == "streamlit" else real(name, *a))
    assert _main(["dashboard"]) == 2
    err = capsys.readouterr().err
    assert err == ("moesim: error: dashboard: got Streamlit is not installed; expected Streamlit: "
                   "pip install 'moesim[app]'\n")
    assert not launched

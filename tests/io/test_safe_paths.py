"""allowed_roots: a scenario document read for someone else (the dashboard's uploads) may name files only inside
a few directories; without it (the command line) any path is read, as before."""

import os
from pathlib import Path

import pytest

from moesim.io.safe_paths import check_allowed, inside_roots
from moesim.io.safe_yaml import load_yaml
from moesim.loader import parse_scenario
from moesim.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS, TRACES, PROFILES = ROOT / "scenarios", ROOT / "traces", ROOT / "hw_profiles"
ROOTS = {"scenarios/": SCENARIOS, "hw_profiles/": PROFILES, "traces/": TRACES}
TRACE = "../traces/tiny-moe-stdlib.parquet"


def quickstart(**sections) -> dict:
    doc = load_yaml((SCENARIOS / "quickstart.yaml").read_text())
    return {**doc, **sections}


def test_inside_roots_resolves_dotdot_and_links(tmp_path):
    assert inside_roots(TRACES / "tiny-moe-stdlib.parquet", ROOTS)
    assert inside_roots(SCENARIOS / ".." / "traces" / "x.parquet", ROOTS)  # need not exist
    assert not inside_roots(SCENARIOS / ".." / "README.md", ROOTS)
    assert not inside_roots(Path("/etc/passwd"), ROOTS)
    assert not inside_roots(Path("bad\0name"), ROOTS)  # unresolvable: nowhere
    upload = tmp_path / "uploads"
    upload.mkdir()
    (upload / "escape.parquet").symlink_to(TRACES.parent / "README.md")  # a link out of the area
    assert not inside_roots(upload / "escape.parquet", {"the upload area": upload})
    assert inside_roots(upload / "own.parquet", {"the upload area": upload})


def test_check_allowed_names_key_and_roots():
    check_allowed("routing.trace", "x", Path("/etc/passwd"), None)  # no roots: anything goes
    with pytest.raises(SpecError) as err:
        check_allowed("routing.trace", "/etc/passwd", Path("/etc/passwd"), ROOTS)
    assert err.value.one_line() == ("routing.trace: got '/etc/passwd'; expected a path inside scenarios/, "
                                    "hw_profiles/, traces/ (this server reads no other files)")


@pytest.mark.parametrize("sections, key", [
    ({"routing": {"trace": "/etc/passwd"}}, "routing.trace"),
    ({"routing": {"trace": "../../../../../../etc/passwd"}}, "routing.trace"),
    ({"routing": {"fit_from": "../README.md"}}, "routing.fit_from"),
    ({"model": {"hf_config": "/etc/hostname"}}, "model.hf_config"),
    ({"cluster": {"profile": "/etc/moesim-profile.yaml", "nodes": 2}}, "cluster.profile"),
    ({"cluster": {"profile": "../../outside/dgx-h100.yaml", "nodes": 2}}, "cluster.profile"),
])
def test_paths_outside_the_roots_are_refused_before_reading(sections, key):
    with pytest.raises(SpecError) as err:
        parse_scenario(quickstart(**sections), "up", SCENARIOS, allowed_roots=ROOTS)
    assert err.value.key == key
    assert "this server reads no other files" in err.value.one_line()


def test_missing_file_outside_says_outside_not_missing():
    """The answer for a path outside is the same whether or not something is there."""
    lines = set()
    for ref in ("/etc/passwd", "/etc/no-such-file-here.parquet"):
        with pytest.raises(SpecError) as err:
            parse_scenario(quickstart(routing={"trace": ref}), "up", SCENARIOS, allowed_roots=ROOTS)
        lines.add(err.value.expected)
    assert len(lines) == 1


def test_paths_inside_are_read():
    sc = parse_scenario(quickstart(routing={"trace": TRACE}), "up", SCENARIOS, allowed_roots=ROOTS)
    assert sc.routing.trace is not None
    sc = parse_scenario(quickstart(cluster={"profile": "../hw_profiles/dgx-h100.yaml", "nodes": 2}), "up",
                        SCENARIOS, allowed_roots=ROOTS)
    assert sc.cluster.profile.name == parse_scenario(quickstart(), "up", SCENARIOS).cluster.profile.name


def test_command_line_reads_any_path(tmp_path):
    """Without allowed_roots (moesim run / validate), a trace elsewhere is read as before."""
    outside = tmp_path / "trace.parquet"
    outside.write_bytes((TRACES / "tiny-moe-stdlib.parquet").read_bytes())
    sc = parse_scenario(quickstart(routing={"trace": str(outside)}), "cli", SCENARIOS)
    assert sc.routing.trace is not None
    assert os.path.isabs(sc.routing.trace_ref)

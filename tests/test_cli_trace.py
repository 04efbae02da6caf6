"""`moesim trace import | fit` from the command line (record is tested in tests/routing/test_recorder.py)."""

import numpy as np

from moesim.cli import main
from moesim.io.traces import read_trace


def write_logs(directory, iters=(1, 11), ranks=2, layers=2, mbs=2, experts=8, seed=0):
    rng = np.random.default_rng(seed)
    shares = np.arange(1, experts + 1, dtype=float) ** -1.2
    for it in iters:
        for r in range(ranks):
            lines = []
            for layer in range(layers):
                rows = rng.multinomial(512, shares / shares.sum(), size=mbs).tolist()
                lines.append(f"{layer}: {rows}")
            (directory / f"table_iter{it}_rank{r}.log").write_text("\n".join(lines) + "\n")


def test_import_then_fit(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    write_logs(logs)
    out = tmp_path / "t.parquet"
    assert main(["trace", "import", str(logs), "--out", str(out)]) == 0
    trace = read_trace(out)
    assert trace.counts.shape == (2, 2, 2, 2, 8) and list(trace.steps) == [1, 11]
    assert np.all(trace.counts.sum(-1) == 512)
    assert main(["trace", "import", str(logs), "--out", str(out)]) == 2  # never overwrites without --force
    assert "--force" in capsys.readouterr().err
    csv = tmp_path / "fit.csv"
    assert main(["trace", "fit", str(out), "--csv", str(csv)]) == 0
    printed = capsys.readouterr().out
    assert "overall:" in printed and csv.read_text().startswith("layer,")


def test_bad_trace_is_one_line(tmp_path, capsys):
    bad = tmp_path / "x.parquet"
    bad.write_text("not parquet")
    assert main(["trace", "fit", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


def test_record_a_tiny_trace(tmp_path, capsys):
    out = tmp_path / "rec.parquet"
    args = ["trace", "record", "--out", str(out), "--steps", "2", "--layers", "1", "--hidden", "32", "--heads", "2",
            "--experts", "4", "--expert-ffn", "32", "--seq-len", "16", "--micro-batch-size", "2", "--micro-batches",
            "1", "--sources", "2", "--threads", "1", "--text-bytes", "20000"]
    assert main(args) == 0
    trace = read_trace(out)
    assert trace.counts.shape == (2, 1, 1, 2, 4) and trace.top_k == 2
    assert np.all(trace.counts.sum(-1) == 16 * 2)
    bad = args + ["--experts", "0"]
    bad[bad.index("--out") + 1] = str(tmp_path / "other.parquet")
    assert main(bad) == 2
    assert "--experts" in capsys.readouterr().err

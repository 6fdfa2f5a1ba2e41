"""`manifoldflow sweep`: a grid of runs, batched by shape, on Dask or in one process;
its records, its resume, its refusals."""

import json
import sys

import manifoldflow as mf
import pytest
from manifoldflow import cli, sweeps


SWEEP = """\
experiment = "two-layer"

[fixed]
d = 6
n = 3
stationarity = 1e-11

[grid]
m = [4, 5]
seed = [0, 1]

[[runs]]
m = 4
n = 9
"""


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_sweep_in_one_process_batches_its_seeds_and_resumes(
    tmp_path, monkeypatch, capsys
):
    # Without dask the runs go one group at a time in this process, and it says so.
    monkeypatch.setitem(sys.modules, "distributed", None)
    file = tmp_path / "sweep.toml"
    file.write_text(SWEEP)
    out = tmp_path / "out"
    argv = ["sweep", str(file), "--out", str(out)]
    assert cli.main(argv) == 1  # the explicit run has n > d: it fails
    err = capsys.readouterr().err
    assert "dask and distributed are not installed" in err
    records = _lines(out / sweeps.RUNS_FILE)
    assert len(records) == 5
    finished = [r for r in records if r["status"] == "finished"]
    assert len(finished) == 4 and all(r["batched"] for r in finished)
    assert all(r["checks_passed"] and r["result"] == "stationary" for r in finished)
    [failed] = [r for r in records if r["status"] == "failed"]
    assert "--n 9 > --d 6" in failed["error"] and failed["options"]["n"] == 9
    for record in finished:
        assert (out / "runs" / record["id"] / "summary.json").is_file()
        assert record["path"] == str(out / "runs" / record["id"])
    assert (out / "sweep.png").is_file()

    # A run of the batch is the run of its own command, to the stop's accuracy.
    [one] = [
        r for r in finished if r["options"]["m"] == 5 and r["options"]["seed"] == 1
    ]
    alone = tmp_path / "alone"
    cli.main(
        ["two-layer", "--m", "5", "--d", "6", "--n", "3", "--seed", "1"]
        + [
            "--stationarity",
            "1e-11",
            "--out",
            str(alone),
            "--no-cache",
            "--no-progress",
        ]
    )
    single = json.loads((alone / "summary.json").read_text())
    assert abs(single["R_final"] - one["R_final"]) <= 1e-9 * single["R_final"]

    # Again: every run is skipped (the failed one too, without --retry-failed).
    capsys.readouterr()
    assert cli.main(argv) == 1
    assert "5 already in" in capsys.readouterr().err
    assert len(_lines(out / sweeps.RUNS_FILE)) == 5
    assert cli.main(argv + ["--retry-failed"]) == 1
    assert len(_lines(out / sweeps.RUNS_FILE)) == 6  # the failed run, once more

    loaded = sweeps.load(out, as_frame=False)
    assert len(loaded) == 5 and {r["id"] for r in loaded} == {r["id"] for r in records}


def test_a_sweep_on_a_local_dask_cluster(tmp_path, capsys):
    pytest.importorskip("distributed")
    file = tmp_path / "sweep.toml"
    file.write_text(
        'experiment = "two-layer"\n[fixed]\nd = 6\nn = 3\n[grid]\nm = [4, 5]\n'
    )
    out = tmp_path / "out"
    argv = ["sweep", str(file), "--out", str(out), "--workers", "2"]
    assert cli.main(argv) == 0
    assert "local Dask cluster of 2 worker processes" in capsys.readouterr().err
    records = _lines(out / sweeps.RUNS_FILE)
    assert sorted(r["options"]["m"] for r in records) == [4, 5]
    assert all(r["status"] == "finished" and r["checks_passed"] for r in records)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'experiment = "two-layer"\n[fixed]\nd = 6\nmm = 3\n',
            "line 4: unknown option 'mm'",
        ),
        (
            'experiment = "two-layer"\n[grid]\nm = [4, 8.5]\n',
            "grid m value 8.5 is not an integer",
        ),
        ('experiment = "two-layer"\n[grid]\nm = []\n', "line 3: grid m is empty"),
        ('experiment = "two-layer"\n[grid]\nm = 4\n', "must be a list"),
        ('experiment = "two-layer"\n[grid]\nsolver = ["rk4"]\n', "is not one of"),
        ('experiment = "two-layers"\n', "is not one of"),
        ('experiment = "two-layer"\n[grids]\nm = [4]\n', "line 2: unknown key 'grids'"),
        ('experiment = "two-layer"\n[fixed]\nout = "x"\n', "unknown option 'out'"),
        ("experiment = \n", "is not valid TOML"),
    ],
)
def test_bad_sweep_files_are_refused(tmp_path, capsys, text, message):
    file = tmp_path / "sweep.toml"
    file.write_text(text)
    assert cli.main(["sweep", str(file), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_unreachable_scheduler_is_reported(tmp_path, capsys):
    pytest.importorskip("distributed")
    file = tmp_path / "sweep.toml"
    file.write_text('experiment = "two-layer"\n[grid]\nm = [4]\n')
    out = tmp_path / "out"
    argv = ["sweep", str(file), "--out", str(out), "--scheduler", "tcp://127.0.0.1:9"]
    assert cli.main(argv) == 2
    assert "cannot reach a Dask scheduler there within 5 s" in capsys.readouterr().err
    assert not out.exists()


def test_load_of_a_folder_without_a_sweep(tmp_path):
    with pytest.raises(mf.InputError, match="not the --out of a sweep"):
        sweeps.load(tmp_path)

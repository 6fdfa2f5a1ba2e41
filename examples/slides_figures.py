"""Z. Li's open-problems slides: the flow's limit against the convex programs, for
sparse recovery (basis pursuit) and matrix sensing (the minimum nuclear norm).

Runs the commands `manifoldflow sparse-recovery` and `manifoldflow matrix-sensing`
(each checks its limit against the convex solution and writes its figure), on their
defaults or, with --quick, on tiny sizes.

    python examples/slides_figures.py [--quick] [--out DIR]

Writes sparse_recovery.png, matrix_sensing.png and slides_figures.json to --out
(default examples/results), with each command's summary under its own folder.
"""

import argparse
import json
import pathlib

from manifoldflow import cli


RESULTS = pathlib.Path(__file__).parent / "results"
QUICK = {
    "sparse-recovery": ["--d", "12", "--n", "6", "--k", "2", "--starts", "2"],
    "matrix-sensing": ["--d", "3", "--rank", "1", "--n", "5"],
}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    args = parser.parse_args(argv)
    codes = {}
    for command, small in QUICK.items():
        folder = args.out / command
        options = small if args.quick else []
        codes[command] = cli.main(
            [command, *options, "--no-progress", "--no-cache", "--out", str(folder)]
        )
        figure = folder / f"{command.replace('-', '_')}.png"
        (args.out / figure.name).write_bytes(figure.read_bytes())
    summary = {
        command: {
            key: value
            for key, value in json.loads(
                (args.out / command / "summary.json").read_text()
            ).items()
            if key in ("result", "checks_passed", "lp_distance", "relative_nuclear_gap")
        }
        | {"exit_code": code}
        for command, code in codes.items()
    }
    (args.out / "slides_figures.json").write_text(json.dumps(summary, indent=1))
    if any(codes.values()):
        raise SystemExit(f"a command did not pass: {codes}")


if __name__ == "__main__":
    main()

"""What the rows of a work--precision run say (`analyse`: per target error, the
fastest configurations, speed-ups against SciPy, evaluations against Euler's), and
their figure (`plot_work_precision`)."""


def evaluation_rate(counted):
    """`(fixed, per step attempt)` evaluations fitted to a line's counted rows (the
    last two with different numbers of attempts), or None."""
    points = {}
    for row in counted:
        points[row["steps_accepted"] + row["steps_rejected"]] = row["vf_evals"]
    if len(points) < 2:
        return None
    (a1, e1), (a2, e2) = sorted(points.items())[-2:]
    slope = (e2 - e1) / (a2 - a1)
    return (e2 - slope * a2, slope)


def is_manifoldflow(row):
    return not row["strategy"].startswith("scipy")


def _fastest(rows, target):
    ok = [r for r in rows if not r["failed"] and r["error"] <= target]
    return min(ok, key=lambda r: r["wall_seconds"]) if ok else None


def _describe(row):
    if row is None:
        return None
    setting = dict(rtol=row["rtol"]) if row["rtol"] else dict(dt=row["dt"])
    return dict(
        strategy=row["strategy"],
        solver=row["solver"],
        **setting,
        error=row["error"],
        constraint_max=row["constraint_max"],
        vf_evals=row["vf_evals"],
        wall_seconds=row["wall_seconds"],
        compile_seconds=row["compile_seconds"],
    )


def analyse(result: dict, targets=tuple(10.0**-k for k in range(4, 11))) -> dict:
    r"""What the rows of one problem say, per target transient error:

    - `fastest`: the fastest configuration reaching it (any strategy);
    - `fastest_manifoldflow` (any $|F|$), `fastest_on_gamma` (also holding
      $\max|F| \le 10^{-12}$) and `fastest_scipy` (outputs projected onto $\Gamma$);
    - `speedup`: SciPy wall / `fastest_on_gamma` wall (like with like: both on
      $\Gamma$), and `speedup_any` against `fastest_manifoldflow`; compile excluded,
      `null` where one of them never reaches the target;
    - `fewest_evals_on_gamma`: the manifoldflow configuration with the fewest
      evaluations among those reaching it with $\max|F| \le 10^{-12}$, and
      `euler_evals` (the fewest of `projected-fixed-euler` reaching it, or, when no
      run did, the extrapolation `evals_finest * error_finest / target` of a
      first-order method, flagged `euler_extrapolated`) and `evals_ratio`;
    - `drift`: $\max|F|$ of `no-projection` per tolerance (per solver).
    """
    rows = [r for r in result["rows"] if "error" in r and not r["failed"]]
    ours = [r for r in rows if is_manifoldflow(r)]
    peers = [r for r in rows if not is_manifoldflow(r)]
    euler = [r for r in rows if r["strategy"] == "projected-fixed-euler"]
    per_target = []
    for target in targets:
        mine, theirs = _fastest(ours, target), _fastest(peers, target)
        tight = _fastest([r for r in ours if r["constraint_max"] <= 1e-12], target)
        on_gamma = [
            r
            for r in ours
            if r["error"] <= target
            and r["constraint_max"] <= 1e-12
            and r["strategy"] != "projected-fixed-euler"
        ]
        best = min(on_gamma, key=lambda r: r["vf_evals"]) if on_gamma else None
        reached = [r for r in euler if r["error"] <= target]
        extrapolated = False
        if reached:
            euler_evals = min(r["vf_evals"] for r in reached)
        elif euler:
            finest = min(euler, key=lambda r: r["error"])
            euler_evals = finest["vf_evals"] * finest["error"] / target
            extrapolated = True
        else:
            euler_evals = None
        per_target.append(
            dict(
                target=target,
                fastest=_describe(_fastest(rows, target)),
                fastest_manifoldflow=_describe(mine),
                fastest_on_gamma=_describe(tight),
                fastest_scipy=_describe(theirs),
                # SciPy's outputs are projected onto Gamma: compare like with like.
                speedup=(
                    theirs["wall_seconds"] / tight["wall_seconds"]
                    if tight and theirs
                    else None
                ),
                speedup_any=(
                    theirs["wall_seconds"] / mine["wall_seconds"]
                    if mine and theirs
                    else None
                ),
                fewest_evals_on_gamma=_describe(best),
                euler_evals=euler_evals,
                euler_extrapolated=extrapolated,
                evals_ratio=(
                    euler_evals / best["vf_evals"] if best and euler_evals else None
                ),
            )
        )
    drift = {}
    for r in rows:
        if r["strategy"] == "no-projection":
            drift.setdefault(r["solver"], []).append(
                dict(rtol=r["rtol"], constraint_max=r["constraint_max"])
            )
    return dict(problem=result["problem"], per_target=per_target, drift=drift)


def plot_work_precision(results: list[dict], figure) -> None:
    """Error vs wall time and vs evaluations (log-log), one line per strategy and
    solver, one row of panels per problem, on a Matplotlib `figure`."""
    import matplotlib
    from matplotlib.ticker import NullFormatter

    height = 4.6 * len(results)
    figure.set_size_inches(14, height)
    axes = figure.subplots(len(results), 2, squeeze=False)
    for (left, right), problem in zip(axes, results):
        groups = {}
        for row in problem["rows"]:
            if not row["failed"] and row["error"] > 0:
                groups.setdefault((row["strategy"], row["solver"]), []).append(row)
        # One colour per line (tab20, then a second marker): 20+ lines.
        palette = matplotlib.colormaps["tab20"]
        for i, ((strategy, solver), rows) in enumerate(sorted(groups.items())):
            style = (
                "--"
                if strategy.startswith("scipy")
                else ("-" if strategy == "projected" else ":")
            )
            for axis, key in ((left, "wall_seconds"), (right, "vf_evals")):
                line = sorted(rows, key=lambda r: r[key])
                axis.loglog(
                    [r[key] for r in line],
                    [r["error"] for r in line],
                    style,
                    color=palette(i % 20),
                    marker="os^"[i // 20 % 3],
                    ms=3,
                    label=f"{strategy} {solver}",
                )
        left.set(
            xlabel="wall seconds (compile excluded)",
            ylabel="max transient error",
            title=problem["problem"],
        )
        right.set(
            xlabel="vector-field evaluations",
            ylabel="max transient error",
            title=problem["problem"],
        )
        for axis in (left, right):
            axis.xaxis.set_minor_formatter(NullFormatter())
        right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    # Margins in inches, so that the x labels fit however many rows there are.
    figure.subplots_adjust(
        left=0.06,
        right=0.8,
        top=1 - 0.4 / height,
        bottom=0.6 / height,
        hspace=0.8 / 4.6,
        wspace=0.22,
    )

"""`make bench-hardware`: every hardware figure of one run, as ratios measured side by side on this machine.

- fit vs a bare loop doing the same lean step (bench.step): the framework's cost per step, target <= 1.10x;
- per-trial fixed cost cold vs warm and a warm worker's memory across trials (bench.warm, SmolLM2-135M-shaped);
- the CPU plan: N one-thread workers vs fewer multi-thread workers, in trials/hour (bench.sweep, real driver).
Writes hardware.csv (one row per figure, with its conditions) and hardware.png under results/tuning/bench.
Timings mean something only on a quiet machine: run it alone. `--quick` is a smoke run of the same path.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from lit_tuning.bench import step, sweep, warm
from lit_tuning.commands import command_parser, parse_or_exit
from lit_tuning.paths import BENCH_ROOT

FULL = {"model": "embedded:tiny", "steps": 200, "repeats": 2, "trials": 20, "cold_trials": 3, "sweep_trials": 4}
QUICK = {"model": "embedded:micro", "steps": 24, "repeats": 1, "trials": 3, "cold_trials": 1, "sweep_trials": 2}


def collect(settings: dict, quick: bool) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Run the three comparisons; return the figures table and each comparison's own rows."""
    parts: dict[str, pd.DataFrame] = {}
    rows = step_figures(settings, quick, parts) + warm_figures(settings, quick, parts) + plan_figures(settings, parts)
    return pd.DataFrame(rows), parts


def step_figures(settings: dict, quick: bool, parts: dict[str, pd.DataFrame]) -> list[dict]:
    """fit vs the bare lean loop at each thread count."""
    model, steps, repeats = settings["model"], settings["steps"], settings["repeats"]
    measured = step.compare(model=model, steps=steps, batch_size=64, threads=[1] if quick else [1, 2], repeats=repeats)
    parts["step"] = pd.DataFrame(measured)
    return [
        {
            "figure": f"fit / bare lean loop, {row['threads']} thread(s)",
            "ratio": row["fit_over_bare"],
            "detail": f"{row['fit_ms_per_step']:.1f} vs {row['bare_ms_per_step']:.1f} ms/step",
            "conditions": f"{model}, batch 64, {steps} steps, median of {repeats}",
        }
        for row in measured
    ]


def warm_figures(settings: dict, quick: bool, parts: dict[str, pd.DataFrame]) -> list[dict]:
    """Per-trial fixed cost cold vs warm, and the warm worker's memory over its trials."""
    summary, rows = warm.compare(trials=settings["trials"], cold_trials=settings["cold_trials"], quick=quick, threads=1)
    parts["warm"] = pd.DataFrame(rows)
    shape = warm.SHAPE + (" (shrunk)" if quick else "")
    return [
        {
            "figure": "per-trial fixed cost, cold / warm",
            "ratio": summary["cold_over_warm"],
            "detail": f"{summary['cold_trial_s']:.2f} vs {summary['warm_trial_s']:.2f} s per one-step trial",
            "conditions": f"{shape}-shaped, fp32 CPU, 1 thread, every tracker on",
        },
        {
            "figure": f"warm worker RSS, last / first of {summary['warm_trials']} trials",
            "ratio": summary["warm_rss_last_mib"] / summary["warm_rss_first_mib"],
            "detail": f"{summary['warm_rss_first_mib']:.0f} -> {summary['warm_rss_last_mib']:.0f} MiB; "
            f"{summary['rss_growth_mib_per_trial_second_half']:.1f} MiB/trial over the second half; "
            f"peak {summary['warm_peak_rss_mib']:.0f} MiB",
            "conditions": f"{shape}-shaped, one worker process",
        },
    ]


def plan_figures(settings: dict, parts: dict[str, pd.DataFrame]) -> list[dict]:
    """One many-thread worker vs one single-thread worker per core, through the real driver, in trials/hour."""
    root = Path(tempfile.mkdtemp(prefix="lit_tuning-bench-plan-"))
    counts = sorted({1, sweep.cores()})
    model, steps = settings["model"], settings["steps"]
    trials = max(settings["sweep_trials"], 2 * counts[-1])  # every worker of the widest plan gets two trials
    plans = pd.DataFrame([sweep.run_study(n, trials=trials, steps=steps, root=root, model=model) for n in counts])
    parts["cpu_plan"] = plans
    fewest, most = plans.iloc[0], plans.iloc[-1]
    return [
        {
            "figure": f"{most.workers} x {most.threads}-thread workers / {fewest.workers} x {fewest.threads}-thread",
            "ratio": most.trials_per_hour / fewest.trials_per_hour,
            "detail": f"{most.trials_per_hour:.0f} vs {fewest.trials_per_hour:.0f} trials/hour",
            "conditions": f"{model}, {trials} trials of {steps} steps, real sweep driver",
        }
    ]


def draw(table: pd.DataFrame, path: Path) -> None:
    """Horizontal bars of the ratios, with the 1.0 line and the fit-overhead target."""
    import matplotlib

    matplotlib.use("Agg")
    import seaborn as sns

    axes = sns.barplot(data=table, y="figure", x="ratio", color="#9ecae1", orient="h")
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.axvline(1.10, color="#d62728", linestyle="--", linewidth=0.8, label="fit overhead target 1.10")
    for index, row in table.iterrows():
        axes.annotate(f"{row.ratio:.2f}x", (row.ratio, index), va="center", ha="left")
    axes.set(xlabel="ratio (side by side, one run)", ylabel="", title="Hardware figures")
    axes.legend(loc="lower right")
    axes.figure.set_size_inches(10, 1 + 0.6 * len(table))
    axes.figure.tight_layout()
    axes.figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    """Run every comparison and write the table, each comparison's rows and the figure."""
    parser = command_parser("python -m lit_tuning.bench.hardware", __doc__)
    parser.add_argument("--quick", action="store_true", help="micro model, few steps and trials: a smoke run")
    parser.add_argument("--out", type=Path, default=BENCH_ROOT)
    args = parse_or_exit(parser, argv)
    table, parts = collect(QUICK if args.quick else FULL, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "hardware.csv", index=False)
    for name, frame in parts.items():
        frame.to_csv(args.out / f"hardware_{name}.csv", index=False)
    draw(table, args.out / "hardware.png")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()

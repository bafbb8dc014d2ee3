"""The paper's Figure 7: fidelity against perception, PSNR-MUSIQ and PSNR-FID (matplotlib; PNG, JPEG, PDF or SVG).

    irib-plot-tradeoff runs/blur0 runs/blur0.5 runs/blur1 runs/blur2 -o tradeoff.png \\
        --labels "blur 0" "blur 0.5" "blur 1" "blur 2" --baseline runs/finetuned:direct --paper div2k

Each RUN is an ``irib-evaluate`` output folder; its ``results.json`` row of ``--method`` (convention
y) becomes one point, and the points of the runs are joined in the order given: a sweep of
checkpoints, e.g. the ``--loss_blur`` sweep of the paper's Table 3. ``--baseline RUN:METHOD`` adds a
lone reference point and ``--paper`` the paper's own Table 3 curve. ``irib-evaluate`` also draws
one of these across the methods it scored (``tradeoff.png``, no lines).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..utils.arguments import add_common_arguments, make_parser, path_arg
from ..utils.errors import CLIError, run_guarded
from .tables import METRIC_DIRECTIONS

PROG = "irib-plot-tradeoff"
#: The y axes of Figure 7, each against PSNR.
TRADEOFF_METRICS = ("musiq", "fid")
LABELS = {"psnr": "PSNR (dB)", "musiq": "MUSIQ", "fid": "FID", "ssim": "SSIM", "lpips": "LPIPS"}


@dataclass
class Series:
    """Points of one curve: ``joined`` draws a line through them in order (a sweep)."""

    name: str
    points: list[tuple[str, dict]] = field(default_factory=list)  # (label, metric values)
    joined: bool = True
    marker: str = "o"
    reasons: dict[str, dict[str, str]] = field(default_factory=dict)  # label -> {metric: why it has no value}
    ours: bool = True  # False: the paper's published points (never enough on their own)


def axis_label(metric: str) -> str:
    arrow = "↑" if METRIC_DIRECTIONS.get(metric, 1) > 0 else "↓"
    return f"{LABELS.get(metric, metric.upper())} {arrow}"


#: Suffixes the figure can be written as (matplotlib's Agg formats); the file's bytes follow its suffix.
FIGURE_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".pdf": "pdf", ".svg": "svg", ".webp": "webp"}


def figure_format(path: Path) -> str:
    """The format ``path``'s suffix names; any other suffix is refused (PNG bytes in a .jpg misled viewers)."""
    fmt = FIGURE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot write a figure to {str(path)!r}: its suffix must be one of {', '.join(FIGURE_FORMATS)}"
        )
    return fmt


def is_value(value) -> bool:
    """A plottable metric value: a finite number (a string such as "n/a" is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def non_numeric(series: list[Series], metrics=("psnr", *TRADEOFF_METRICS)) -> list[str]:
    """Notes on the values that are neither numbers nor missing, which the figure leaves out."""
    return [
        f"{s.name} {label}: {metric} = {v[metric]!r} is not a number; point left out"
        for s in series
        for label, v in s.points
        for metric in metrics
        if v.get(metric) is not None and not is_value(v[metric])
    ]


def plottable(series: list[Series], metric: str) -> bool:
    return any(is_value(values.get("psnr")) and is_value(values.get(metric)) for s in series for _, values in s.points)


def left_out(series: list[Series], metrics=TRADEOFF_METRICS) -> list[str]:
    """What a figure of ``series`` does not show, one line each, with the reason the run gives: a
    panel no point can be drawn in, and every point missing from a panel that is drawn."""
    drawn = [m for m in metrics if plottable(series, m)]
    lines = [
        f"the PSNR-{LABELS.get(m, m)} panel: no point has PSNR and {m.upper()}" for m in metrics if m not in drawn
    ]
    for s in series:
        for label, values in s.points:
            missing = [m for m in ("psnr", *drawn) if values.get(m) is None]
            panels = [m for m in drawn if values.get("psnr") is None or values.get(m) is None]
            if not panels:
                continue
            why = "; ".join(f"{m.upper()} {s.reasons.get(label, {}).get(m, 'not in its results')}" for m in missing)
            where = " and ".join(f"PSNR-{LABELS.get(m, m)}" for m in panels)
            lines.append(f"{s.name} {label!r} is not in the {where} panel ({why})")
    return lines


def tradeoff_figure(
    series: list[Series], path: Path, title: str = "", metrics=TRADEOFF_METRICS, note: str = ""
) -> list[str]:
    """Draw one panel per metric (against PSNR) that has values; returns the metrics drawn.

    Nothing is written when no panel has a value, since an empty plot would only mislead; ``note``
    (e.g. what was left out) is printed under the panels.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fmt = figure_format(path)
    drawn = [m for m in metrics if plottable(series, m)]
    if not drawn:
        return []
    fig, axes = plt.subplots(1, len(drawn), figsize=(5.2 * len(drawn), 4.2), squeeze=False)
    for panel, (ax, metric) in enumerate(zip(axes[0], drawn)):
        for s in series:
            points = [
                (label, v["psnr"], v[metric])
                for label, v in s.points
                if is_value(v.get("psnr")) and is_value(v.get(metric))
            ]
            if not points:
                continue
            xs, ys = [p[1] for p in points], [p[2] for p in points]
            ax.plot(xs, ys, marker=s.marker, linestyle="-" if s.joined and len(points) > 1 else "none", label=s.name)
            for label, x, y in points:
                ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(axis_label("psnr"))
        ax.set_ylabel(axis_label(metric))
        ax.set_title(f"({chr(ord('a') + panel)}) PSNR-{LABELS.get(metric, metric)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if note:
        fig.subplots_adjust(bottom=0.2)
        fig.text(0.01, 0.01, note, fontsize=7, color="firebrick", wrap=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, dpi=120, format=fmt)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return drawn


# --------------------------------------------------------------------------- sweep CLI
def run_result(run: Path, method: str) -> tuple[dict, dict[str, str]]:
    """The ``method`` row (Y convention when present) of one irib-evaluate run, and why each metric
    without a value has none (the run's ``unavailable`` record)."""
    results = run / "results.json"
    if not results.is_file():
        raise CLIError(f"{str(run)!r} has no results.json (is it an irib-evaluate output folder?)")
    try:
        record = json.loads(results.read_text(encoding="utf-8"))
        rows = record["rows"]
    except (ValueError, KeyError) as err:
        raise CLIError(f"{str(results)!r} is not an irib-evaluate results file: {err}") from None
    mine = [r for r in rows if r["method"] == method]
    if not mine:
        have = sorted({r["method"] for r in rows})
        raise CLIError(f"{str(run)!r} has no method {method!r} (it has: {', '.join(have)})")
    row = next((r for r in mine if r.get("convention") == "y"), mine[0])
    unavailable = record.get("unavailable") or {}
    reasons = {}
    for metric in ("psnr", *TRADEOFF_METRICS):
        if row.get(metric) is None:
            why = f": {unavailable[metric]}" if metric in unavailable else " (not asked for)"
            reasons[metric] = f"unavailable in {str(run)!r}{why}"
    return row, reasons


def run_row(run: Path, method: str) -> dict:
    """The ``method`` row (Y convention when present) of one irib-evaluate run."""
    return run_result(run, method)[0]


def paper_series(dataset: str) -> list[Series]:
    """The paper's Table 3: its blur sweep as a curve and the fine-tuned baseline as a lone point."""
    from .paper import paper_rows

    rows = paper_rows(dataset, "Table 3")
    sweep = Series(f"paper {dataset.upper()}: OSEDiff + Ours", marker="s", ours=False)
    baseline = Series(f"paper {dataset.upper()}: OSEDiff fine-tuned", joined=False, marker="^", ours=False)
    for row in rows:
        if "blur" in row.method:
            sweep.points.append((row.method.split("(")[-1].rstrip(")"), row.as_dict()))
        else:
            baseline.points.append(("fine-tuned", row.as_dict()))
    return [sweep, baseline]


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, __doc__)
    parser.add_argument(
        "runs", nargs="*", metavar="RUN", type=path_arg, help="irib-evaluate output folders, in sweep order."
    )
    parser.add_argument(
        "-o",
        "--output",
        default="tradeoff.png",
        type=path_arg,
        help="The figure to write, in the format of its suffix: .png, .jpg, .pdf, .svg or .webp (default tradeoff.png).",
    )
    parser.add_argument("--method", default="irib", help="The method row of each run (default irib).")
    parser.add_argument("--labels", nargs="+", default=None, help="One label per run (default: the folder names).")
    parser.add_argument("--name", default="ours", help="Legend name of the sweep (default ours).")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="RUN:METHOD",
        help="A reference point, e.g. runs/finetuned:direct (repeatable).",
    )
    parser.add_argument("--paper", choices=["div2k", "div8k"], default=None, help="Add the paper's Table 3.")
    parser.add_argument("--title", default="", help="A title above the panels.")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    if not args.runs and not args.paper and not args.baseline:
        raise CLIError("nothing to plot: give RUN folders, --baseline or --paper")
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise CLIError(f"--labels has {len(args.labels)} entries for {len(args.runs)} runs")
    output = Path(args.output)
    try:
        figure_format(output)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if output.exists() and not args.overwrite:
        raise CLIError(f"{str(output)!r} exists; pass --overwrite to replace it")
    labels = args.labels or [Path(r).name for r in args.runs]
    series: list[Series] = []
    if args.runs:
        sweep = Series(args.name)
        for label, r in zip(labels, args.runs):
            row, sweep.reasons[label] = run_result(Path(r), args.method)
            sweep.points.append((label, row))
        series.append(sweep)
    for spec in args.baseline:
        folder, _, method = spec.rpartition(":")
        if not folder or not method:
            raise CLIError(f"--baseline must look like RUN:METHOD, got {spec!r}")
        row, reasons = run_result(Path(folder), method)
        name = f"{Path(folder).name}: {method}"
        series.append(Series(name, [(method, row)], joined=False, marker="^", reasons={method: reasons}))
    if args.paper:
        series += paper_series(args.paper)
    for note in non_numeric(series):
        print(f"{PROG}: note: {note}", file=sys.stderr)
    check_ours_drawn(series)
    missing = left_out(series)
    note = "Left out: " + "; ".join(line.split(" (")[0] for line in missing) if missing else ""
    drawn = tradeoff_figure(series, output, args.title, note=note)
    if not drawn:
        raise CLIError("no point has PSNR together with MUSIQ or FID (were they unavailable in these runs?)")
    print(f"wrote {output} (PSNR against {', '.join(m.upper() for m in drawn)})")
    for line in missing:
        print(f"  left out: {line}")
    return 0


def check_ours_drawn(series: list[Series]) -> None:
    """Refuse a figure in which none of the user's runs appears (only the paper's points would)."""
    ours = [s for s in series if s.ours]
    if not ours or any(plottable([s], m) for s in ours for m in TRADEOFF_METRICS):
        return  # (only --paper: the paper's figure, asked for as such)
    why = "; ".join(
        f"{s.name} {label!r}: " + ", ".join(f"{m.upper()} {r}" for m, r in s.reasons.get(label, {}).items())
        for s in ours
        for label, _ in s.points
    )
    raise CLIError(
        "no point has PSNR together with MUSIQ or FID, so none of these runs can be drawn"
        + (" (the figure would show only the paper's points)" if len(ours) < len(series) else "")
        + (f": {why}" if why else "")
    )


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, args.debug, lambda: run(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

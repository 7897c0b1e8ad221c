"""PNG plots of a summary (matplotlib, Agg backend: no display needed).

speedup.png      speedup over the baseline per dataset and Mean, one bar per method, one panel per T
accept_length.png  per-request accept length (SGLang's, seed 002's τ) per dataset, one panel per T
concurrency.png  throughput and latency p50/p95 vs concurrency (only with more than one concurrency)
`plot_training_curves`: validation tau and training top-1 of draft training runs vs epoch (`hass curves`)
"""

from __future__ import annotations

from pathlib import Path

from hass_sglang.bench.questions import DISPLAY_NAMES
from hass_sglang.bench.report import MEAN, cell_index, latest_records


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_speedup(summary: dict, path: Path) -> Path | None:
    plt = _plt()
    idx = cell_index(summary)
    c = min(summary["concurrencies"])
    methods = [m for m in summary["methods"] if m != summary["baseline"]]
    cols = [*summary["datasets"], MEAN]
    temps = summary["temperatures"]
    if not methods or not temps:
        return None
    fig, axes = plt.subplots(1, len(temps), figsize=(1.2 * len(cols) * len(temps) + 2, 4), squeeze=False)
    width = 0.8 / len(methods)
    for ax, t in zip(axes[0], temps):
        for i, m in enumerate(methods):
            ys = [(idx.get((m, t, c, d)) or {}).get("speedup") or 0.0 for d in cols]
            ax.bar([j + i * width - 0.4 + width / 2 for j in range(len(cols))], ys, width, label=m)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(cols)), [DISPLAY_NAMES.get(d, d) for d in cols], rotation=30, ha="right")
        ax.set_title(f"T={t:g}, concurrency {c}")
        ax.set_ylabel(f"speedup over {summary['baseline']}")
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_accept_length(summary: dict, raw: dict, path: Path) -> Path | None:
    plt = _plt()
    c = min(summary["concurrencies"])
    temps = summary["temperatures"]
    lengths = {}
    for (m, t, cc), recs in raw.items():
        if cc != c:
            continue
        for r in latest_records(recs):
            if r.get("verify_ct"):  # completion tokens / verify steps, as SGLang counts them
                lengths.setdefault((t, m), {}).setdefault(r["dataset"], []).append(r["output_tokens"] / r["verify_ct"])
    methods = [m for m in summary["methods"] if any((t, m) in lengths for t in temps)]
    if not methods:
        return None
    fig, axes = plt.subplots(1, len(temps), figsize=(1.4 * len(summary["datasets"]) * len(temps) + 2, 4),
                             squeeze=False)
    for ax, t in zip(axes[0], temps):
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            data = [lengths.get((t, m), {}).get(d, []) for d in summary["datasets"]]
            pos = [j + i * width - 0.4 + width / 2 for j in range(len(data))]
            keep = [(p, x) for p, x in zip(pos, data) if x]
            if keep:
                bp = ax.boxplot([x for _, x in keep], positions=[p for p, _ in keep], widths=width * 0.9,
                                patch_artist=True, manage_ticks=False)
                for box in bp["boxes"]:
                    box.set_facecolor(f"C{i}")
                for median in bp["medians"]:
                    median.set(color="black")
                for p, x in keep:  # the requests themselves (a few per set on a CPU run)
                    ax.scatter([p] * len(x), x, s=10, color=f"C{i}", edgecolors="black", linewidths=0.4, zorder=3)
                ax.plot([], [], color=f"C{i}", linewidth=6, label=m)
        ax.set_xticks(range(len(summary["datasets"])), [DISPLAY_NAMES.get(d, d) for d in summary["datasets"]],
                      rotation=30, ha="right")
        ax.set_title(f"T={t:g}, concurrency {c}")
        ax.set_ylabel("accept length τ per request (tokens / verify step)")
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_concurrency(summary: dict, path: Path) -> Path | None:
    if len(summary["concurrencies"]) < 2:
        return None
    plt = _plt()
    idx = cell_index(summary)
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for i, m in enumerate(summary["methods"]):
        for j, t in enumerate(summary["temperatures"]):
            cs = [c for c in summary["concurrencies"] if (m, t, c, MEAN) in idx]
            if not cs:
                continue
            style = ["-", "--", ":", "-."][j % 4]
            cells = [idx[(m, t, c, MEAN)] for c in cs]
            ax_t.plot(cs, [x["throughput"] for x in cells], style, marker="o", color=f"C{i}", label=f"{m} T={t:g}")
            ax_l.plot(cs, [x["latency_p50_s"] for x in cells], style, marker="o", color=f"C{i}",
                      label=f"{m} T={t:g} p50")
            ax_l.plot(cs, [x["latency_p95_s"] for x in cells], style, marker="x", color=f"C{i}", alpha=0.5,
                      label=f"{m} T={t:g} p95")
    for ax, label in ((ax_t, "output token/s (mean over datasets)"), (ax_l, "request latency (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(summary["concurrencies"], [str(c) for c in summary["concurrencies"]])
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def write_plots(summary: dict, raw: dict, plots_dir: Path) -> list[Path]:
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    made = [plot_speedup(summary, plots_dir / "speedup.png"), plot_accept_length(summary, raw, plots_dir / "accept_length.png"),
            plot_concurrency(summary, plots_dir / "concurrency.png")]
    return [p for p in made if p is not None]


def plot_training_curves(curves: list, path: Path) -> Path | None:
    """Validation tau and training step-1 top-1 vs epoch, one line per run (train.curves.TrainingCurve);
    the best validated point of each run is circled."""
    if not any(c.points for c in curves):
        return None
    plt = _plt()
    fig, (ax_tau, ax_top1) = plt.subplots(1, 2, figsize=(11, 4))
    for i, c in enumerate(curves):
        label = c.name + (" (continued)" if c.init_from else "")
        val = [p for p in c.points if "val_tau" in p]
        if val:
            ax_tau.plot([p["epoch"] for p in val], [p["val_tau"] for p in val], marker="o", color=f"C{i}", label=label)
            ax_tau.scatter([c.best["epoch"]], [c.best["val_tau"]], s=160, facecolors="none", edgecolors=f"C{i}")
        top1 = [p for p in c.points if "step1/top1" in p]
        if top1:
            ax_top1.plot([p["epoch"] for p in top1], [p["step1/top1"] for p in top1], marker=".", color=f"C{i}",
                         label=label)
    for ax, label in ((ax_tau, "validation τ (16-token tree, T=0)"),
                      (ax_top1, "training top-1 of the first draft step")):
        ax.set_xlabel("epochs of the run")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)

"""The benchmark's table and figure (matplotlib, imported only when drawing)."""

from __future__ import annotations

from pathlib import Path


def table(points: list[dict], ort_points: list[dict]) -> str:
    lines = [f"{'model':<10} {'server':<13} {'conc':>4} {'req/s':>8} {'p50 ms':>8} "
             f"{'p99 ms':>8} {'batch':>6} {'errors':>6} {'CPU ms/req':>10}"]
    for p in points:
        lines.append(f"{p['model']:<10} {p['server']:<13} {p['concurrency']:>4} "
                     f"{p['throughput_rps']:>8.0f} {p['p50_ms']:>8.2f} {p['p99_ms']:>8.2f} "
                     f"{p['mean_batch_size']:>6.1f} {p['errors']:>6} "
                     f"{p.get('server_cpu_ms_per_request', float('nan')):>10.3f}")
    lines += ["", f"{'model':<10} {'ORT batch':>9} {'rows/s':>9} {'ms/batch':>9}  inputs"]
    for o in ort_points:
        lines.append(f"{o['model']:<10} {o['batch_size']:>9} {o['rows_per_s']:>9.0f} "
                     f"{o['ms_per_batch']:>9.2f}  {o['inputs']}")
    return "\n".join(lines)


def plot(points: list[dict], ort_points: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(p["model"] for p in points)) or \
        list(dict.fromkeys(o["model"] for o in ort_points))
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(6.5 * max(1, len(models)), 4.8),
                             squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [p for p in points if p["model"] == model]
        for number, label in enumerate(dict.fromkeys(p["server"] for p in mine)):
            series = sorted((p for p in mine if p["server"] == label),
                            key=lambda p: p["concurrency"])
            x = [p["throughput_rps"] for p in series]
            for key, style in (("p50_ms", "o-"), ("p99_ms", "s--")):
                ax.plot(x, [p[key] for p in series], style, color=f"C{number}",
                        label=f"{key[:3]} ({label})" if len(mine) > len(series) else key[:3])
            for p in series:
                ax.annotate(f"c={p['concurrency']}\nb={p['mean_batch_size']:.1f}",
                            (p["throughput_rps"], p["p99_ms"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
        ceiling = [o for o in ort_points if o["model"] == model]
        if ceiling:
            best = max(ceiling, key=lambda o: o["rows_per_s"])
            ax.axvline(best["rows_per_s"], color="grey", linestyle=":",
                       label=f"bare ORT, batch {best['batch_size']}: "
                             f"{best['rows_per_s']:.0f} rows/s")
        ax.set_yscale("log")
        ax.set_xlabel("throughput (requests/s, one row each)")
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{model}: latency vs throughput (c = concurrency, b = mean batch)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

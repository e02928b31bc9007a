"""The README's results section and its plots, from bench/results/suite.json (made by bench/run.py).

python bench/report.py                   # print the tables, write docs/bench/*.png
python bench/report.py --readme README.md  # also replace the section between the bench markers
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

HERE = Path(__file__).parent
BEGIN, END = "<!-- bench:begin (written by bench/report.py) -->", "<!-- bench:end -->"
TITLES = {
    "smollm2-135m": "SmolLM2-135M-Instruct",
    "qwen2.5-0.5b-shape": "Qwen2.5-0.5B shape, random weights",
    "llama-3.2-1b-shape": "Llama-3.2-1B shape, random weights",
}
OURS = ("edgekit", "edgekit-mlx")
PEERS_OF = {"edgekit": ("llama.cpp", "onnxruntime-genai", "optimum", "transformers"), "edgekit-mlx": ("mlx-lm",)}


def rows(data: dict, table: str, model: str) -> list[dict]:
    return [r for r in data[table] if r["model"] == model and "error" not in r]


def artifact(data: dict, r: dict) -> dict:
    return next(a for a in data["artifacts"] if all(a[k] == r[k] for k in ("model", "engine", "variant")))


def rounds_text(speed: list[dict]) -> str:
    """How many timing rounds (each in its own process, taken in turn across artifacts) each engine got."""
    by_count: dict[int, list[str]] = {}
    for r in speed:
        count = len(r["rounds"]["tg"]) if "rounds" in r else 1
        if r["engine"] not in by_count.setdefault(count, []):
            by_count[count].append(r["engine"])
    repeat = speed[0].get("repeat") or len(speed[0]["runs"]["tg"])
    if len(by_count) == 1:
        (count,) = by_count
        parts = f"{count} round{'s' * (count > 1)}"
    else:
        parts = "; ".join(
            f"{', '.join(e)}: {c} round{'s' * (c > 1)}" for c, e in sorted(by_count.items(), reverse=True)
        )
    return f"median over rounds taken in turn across engines ({parts}), each round the median of {repeat} runs"


def speed_table(data: dict, model: str) -> list[str]:
    plan = data["models"][model]
    bandwidth = read_bandwidth(data)[0]
    lines = [
        f"**{TITLES.get(model, model)}** ({plan['parameters'] / 1e6:.0f} M parameters), "
        f"pp{plan['prompt']} / tg{plan['gen']}, {data['threads']} threads, {rounds_text(rows(data, 'speed', model))}:",
        "",
        "| engine | artifact | MB | bits/weight | prefill tok/s | decode tok/s | TTFT ms | peak RSS MB "
        "| decode bound tok/s | timed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    # the latest day's rows first: rows timed on different days are not to be compared
    by_decode = sorted(rows(data, "speed", model), key=lambda r: -r["tg"])
    for r in sorted(by_decode, key=lambda r: r.get("date", ""), reverse=True):
        a = artifact(data, r)
        name = f"**{r['engine']}**" if r["engine"] in OURS else r["engine"]
        bound = bandwidth * 1e3 / a["megabytes"]
        lines.append(
            f"| {name} | {r['variant']} | {a['megabytes']:.0f} | {a['bits_per_weight']:.2f} | {r['pp']:.0f} | "
            f"{r['tg']:.1f} | {r['ttft_ms']:.0f} | {r['peak_rss_mb']:.0f} | {bound:.0f} | {r.get('date', '')} |"
        )
    lines += ["", *ratio_lines(data, model)]
    return lines


def best(data: dict, model: str, engine: str, date: str | None = None) -> dict | None:
    """The engine's default artifact, else its fastest to decode; with `date`, only rows timed that day
    (rows timed on other days ran on the host in another state, or on another host)."""
    candidates = [r for r in rows(data, "speed", model) if r["engine"] == engine and date in (None, r.get("date"))]
    default = [r for r in candidates if r["variant"] == "default"]
    return max(default or candidates, key=lambda r: r["tg"], default=None)


def per_round(a: dict, b: dict, metric: str) -> str:
    """a's ratios to b round by round, where both were timed in the same rounds (a few seconds apart)."""
    ra, rb = a.get("rounds", {}).get(metric), b.get("rounds", {}).get(metric)
    if not ra or not rb or len(ra) != len(rb) or len(ra) < 3:
        return ""
    ratios = sorted(x / y for x, y in zip(ra, rb, strict=True))
    return f" (by round: median x{statistics.median(ratios):.2f}, x{ratios[0]:.2f}-{ratios[-1]:.2f})"


def ratio_lines(data: dict, model: str) -> list[str]:
    out = []
    for ours, peers in PEERS_OF.items():
        a = best(data, model, ours)
        if a is None:
            continue
        parts = []
        for peer in peers:
            b = best(data, model, peer, a.get("date"))
            if b is not None:
                parts.append(
                    f"{peer} ({b['variant']}) prefill x{a['pp'] / b['pp']:.2f}{per_round(a, b, 'pp')}, "
                    f"decode x{a['tg'] / b['tg']:.2f}{per_round(a, b, 'tg')}"
                )
        if parts:
            out.append(f"{ours} against " + "; ".join(parts) + ".")
    return out


def quality_table(data: dict, model: str) -> list[str]:
    quality = rows(data, "quality", model)
    if not quality:
        return []
    base = next((q["perplexity"] for q in quality if q["engine"] == "transformers"), None)
    lines = [
        f"Perplexity on held-out text ({quality[0]['tokens']} tokens of Debian's `fortunes` literature and science "
        "files, the same token ids for every engine), each artifact run by its own engine:",
        "",
        "| engine | artifact | bits/weight | MB | perplexity | x unquantized |",
        "|---|---|---|---|---|---|",
    ]
    for q in sorted(quality, key=lambda q: q["perplexity"]):
        a = artifact(data, q)
        ratio = f"{q['perplexity'] / base:.3f}" if base else "-"
        name = f"**{q['engine']}**" if q["engine"] in OURS else q["engine"]
        lines.append(
            f"| {name} | {q['variant']} | {a['bits_per_weight']:.2f} | {a['megabytes']:.0f} | "
            f"{q['perplexity']:.2f} | {ratio} |"
        )
    return lines


def export_table(data: dict) -> list[str]:
    lines = [
        "| model | engine | artifact | export s | peak export RSS MB | x fp16 size |",
        "|---|---|---|---|---|---|",
    ]
    for model, info in data["models"].items():
        fp16 = 2 * info["parameters"] / 1e6
        speed_variants = {(r["engine"], r["variant"]) for r in rows(data, "speed", model)}
        for a in rows(data, "artifacts", model):
            if (a["engine"], a["variant"]) not in speed_variants or a["engine"] == "transformers":
                continue
            mark = " *" if a.get("note") else ""
            lines.append(
                f"| {TITLES.get(model, model)} | {a['engine']} | {a['variant']}{mark} | {a['export_seconds']:.0f} | "
                f"{a['export_peak_rss_mb']:.0f} | {a['export_peak_rss_mb'] / fp16:.2f} |"
            )
    notes = [(model, a) for model in data["models"] for a in rows(data, "artifacts", model) if a.get("note")]
    if notes:
        lines.append("")
        lines += [f"\\* {TITLES.get(m, m)}, {a['engine']} {a['variant']}: {a['note']}" for m, a in notes]
    return lines


def timed_models(data: dict) -> list[str]:
    return [m for m in data["models"] if rows(data, "speed", m)]


def plot_speed(data: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    models = timed_models(data)
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 6.5), squeeze=False)
    for col, model in enumerate(models):
        speed = sorted(rows(data, "speed", model), key=lambda r: -r["tg"])
        labels = [f"{r['engine']}\n{r['variant']}" for r in speed]
        colors = ["tab:green" if r["engine"] in OURS else "tab:gray" for r in speed]
        for row, (key, what) in enumerate((("tg", "decode"), ("pp", "prefill"))):
            ax = axes[row][col]
            values = [r[key] for r in speed]
            ax.barh(labels, values, color=colors)
            ax.invert_yaxis()
            ax.set_title(f"{TITLES.get(model, model)}\n{what} tokens/s" if row == 0 else f"{what} tokens/s", fontsize=9)
            ax.tick_params(labelsize=7)
            for y, v in enumerate(values):
                ax.text(v, y, f" {v:.0f}" if v >= 10 else f" {v:.1f}", va="center", fontsize=7)
            ax.set_xlim(0, max(values) * 1.25)
    fig.suptitle(f"{data['machine']['cpu']}, {data['threads']} threads ({data['date']}); edgekit in green", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recipe_of(variant: str) -> str:
    """edgekit's algorithm behind a variant name: one plotted series per algorithm, over group sizes
    and bits ("default" is awq-gptq at its default groups)."""
    if variant == "default":
        return "awq-gptq"
    return variant.rsplit("-g", 1)[0] if "-g" in variant else variant.split("-")[0]


def plot_quality(data: dict, model: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    quality = rows(data, "quality", model)
    series: dict[str, list[tuple[float, float, str]]] = {}
    reference = None
    for q in quality:
        a = artifact(data, q)
        if q["engine"] == "transformers":
            reference = q["perplexity"]
            continue
        label = f"edgekit {recipe_of(q['variant'])}" if q["engine"] == "edgekit" else q["engine"]
        series.setdefault(label, []).append((a["bits_per_weight"], q["perplexity"], q["variant"]))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, points in sorted(series.items()):
        points.sort()
        style = "-o" if label.startswith("edgekit") else "--s"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label, markersize=6)
        for x, y, variant in points:  # edgekit's series are told apart by the legend, but for its default
            if not label.startswith("edgekit") or variant == "default":
                ax.annotate(variant, (x, y), fontsize=7, xytext=(4, 2), textcoords="offset points")
    if reference is not None:
        ax.axhline(reference, color="black", linestyle=":", linewidth=1)
        ax.annotate(f"unquantized (fp32): {reference:.1f}", (ax.get_xlim()[0], reference), fontsize=7,
                    xytext=(2, -10), textcoords="offset points")  # fmt: skip
    ax.set_xlabel("bits per weight (all weight bytes x 8 / parameters, embedding included)")
    ax.set_ylabel("perplexity on held-out text (lower is better)")
    ax.set_title(f"{TITLES.get(model, model)}: quality against size, each artifact in its own engine", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(data: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    models = timed_models(data)
    fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 6.5), squeeze=False)
    for col, model in enumerate(models):
        speed = sorted(rows(data, "speed", model), key=lambda r: r["peak_rss_mb"])
        exported = [artifact(data, r) for r in speed if r["engine"] != "transformers"]
        for row, (items, key, what) in enumerate(
            (
                (speed, "peak_rss_mb", "peak RSS while running, MB"),
                (exported, "export_peak_rss_mb", "peak RSS while exporting, MB"),
            )
        ):
            ax = axes[row][col]
            labels = [f"{r['engine']}\n{r['variant']}" for r in items]
            values = [r[key] for r in items]
            ax.barh(labels, values, color=["tab:green" if r["engine"] in OURS else "tab:gray" for r in items])
            ax.invert_yaxis()
            ax.set_title(f"{TITLES.get(model, model)}\n{what}" if row == 0 else what, fontsize=9)
            ax.tick_params(labelsize=7)
            for y, v in enumerate(values):
                ax.text(v, y, f" {v:.0f}", va="center", fontsize=7)
            ax.set_xlim(0, max(values, default=1) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_bandwidth(data: dict) -> tuple[float, float]:
    """The best and the worst read bandwidth measured by the runs the tables come from (GB/s)."""
    measured = [r["memory_read_gbs"] for r in data.get("runs", []) if "memory_read_gbs" in r]
    measured = measured or [data["machine"]["memory_read_gbs"]]
    return max(measured), min(measured)


def section(data: dict, plots: Path, relative_to: Path) -> str:
    m = data["machine"]
    best_read, worst_read = read_bandwidth(data)
    rel = lambda p: Path(os.path.relpath(p, relative_to)).as_posix()  # noqa: E731
    runs = "; then ".join(
        f"`{r['command']}` ({r['date']}, {r['seconds'] / 60:.0f} minutes{': ' + r['note'] if r.get('note') else ''})"
        for r in data["runs"]
    )
    lines = [
        f"Measured by `make bench`'s runner, {runs}, on "
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, Python {m['python']}; raw numbers in "
        "`bench/results/suite.json`. Versions: "
        + "; ".join(sorted({f"{r['engine']}: {r['version']}" for r in data["artifacts"] if "version" in r}))
        + ".",
        "",
    ]
    if timed_models(data):
        lines += [f"![tokens per second]({rel(plots / 'speed.png')})", ""]
    for model in data["models"]:
        if rows(data, "speed", model):
            lines += [*speed_table(data, model), ""]
    lines += [
        f"Decode bound: the most tokens/s a decode step could reach if it did nothing but read every byte of "
        f"the artifact once, at this machine's best measured read bandwidth ({best_read} GB/s: numpy "
        "reading a 1 GiB buffer with one and with two threads, the better"
        + (f"; {worst_read} GB/s in another run of this shared host" if worst_read < best_read else "")
        + "). An untied embedding is only "
        "gathered, not read whole, so such a model could beat it slightly; all three models here are tied."
        + (f" (The bandwidth was {m['memory_read_note']}.)" if m.get("memory_read_note") else ""),
        "",
    ]
    for model in data["models"]:
        q = quality_table(data, model)
        if q:
            lines += [*q, "", f"![perplexity against bits per weight]({rel(plots / f'quality-{model}.png')})", ""]
    lines += [
        "Export: time and peak memory of each engine's own tool (in a child process), against the model's "
        "size in fp16:",
        "",
    ]
    lines += [*export_table(data), ""]
    if timed_models(data):
        lines += [f"![memory]({rel(plots / 'memory.png')})", ""]
    skipped = data.get("skipped", {})
    if skipped:
        lines += ["Not measured in this run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=HERE / "results" / "suite.json")
    parser.add_argument("--plots", type=Path, default=HERE.parent / "docs" / "bench")
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    args.plots.mkdir(parents=True, exist_ok=True)
    if timed_models(data):
        plot_speed(data, args.plots / "speed.png")
        plot_memory(data, args.plots / "memory.png")
    for model in data["models"]:
        if rows(data, "quality", model):
            plot_quality(data, model, args.plots / f"quality-{model}.png")
    root = (args.readme or HERE.parent / "README.md").resolve().parent
    text = section(data, args.plots.resolve(), root)
    print(text)
    if args.readme:
        readme = args.readme.read_text()
        if BEGIN not in readme or END not in readme:
            raise SystemExit(f"{args.readme}: no {BEGIN} ... {END} markers to write between")
        head, rest = readme.split(BEGIN, 1)
        args.readme.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()

"""Render a pytest-benchmark JSON of the nnxp suite as a Markdown table and a PNG chart.

Usage::

    python benchmarks/report.py benchmarks/results/latest.json [--out-dir benchmarks/results]

writes ``<stem>.md`` and ``<stem>.png`` next to the JSON (or into ``--out-dir``). Every figure is
read as a ratio within one run:

* ``nnxp/peer`` — nnxp's time over PyTorch's on the same device (autograd + torch.optim);
  below 1 means nnxp is faster.
* ``bound/nnxp`` — the time of the step's bare matrix products over nnxp's time: the fraction
  of the achievable (matmul-limited) speed that nnxp reaches.
* ``nnxp/by-hand`` — nnxp's time over the hand-written NumPy step.
* GPU speed-up — the numpy backend's time over a GPU backend's time, per kernel and model.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def load_rows(data: dict[str, Any]) -> list[Row]:
    """One flat dict per benchmark: its extra_info plus median/min/stddev/rounds (seconds)."""
    rows = []
    for b in data["benchmarks"]:
        info = dict(b.get("extra_info", {}))
        if "impl" not in info:
            continue
        st = b["stats"]
        info.update(median=st["median"], min=st["min"], stddev=st["stddev"],
                    rounds=st["rounds"], name=b["name"])
        rows.append(info)
    return rows


def _index(rows: Iterable[Row]) -> dict[tuple[str, str, str], Row]:
    """(impl, backend-or-device, key) → row. Peers are indexed by device, others by backend."""
    out = {}
    for r in rows:
        where = r["device"] if r["impl"] in ("torch", "torch-fused", "numpy-by-hand") \
            else r["backend"]
        out[(r["impl"], where, r["key"])] = r
    return out


def _ms(r: Row | None) -> str:
    return "" if r is None else f"{r['median'] * 1e3:.3f}"


def _ratio(a: Row | None, b: Row | None) -> str:
    return "" if a is None or b is None else f"{a['median'] / b['median']:.2f}"


def _gflops(r: Row | None) -> str:
    if r is None or not r.get("flops"):
        return ""
    return f"{r['flops'] / r['median'] / 1e9:.1f}"


def compare(rows: list[Row], group: str) -> list[dict[str, Any]]:
    """nnxp rows of ``group`` with their peer, fused peer, by-hand and bound rows."""
    idx = _index(rows)
    out = []
    for r in rows:
        if r["impl"] != "nnxp" or r["group"] != group:
            continue
        dev, key = r["device"], r["key"]
        out.append({"nnxp": r, "torch": idx.get(("torch", dev, key)),
                    "torch-fused": idx.get(("torch-fused", dev, key)),
                    "by-hand": idx.get(("numpy-by-hand", dev, key)),
                    "bound": idx.get(("matmul-bound", r["backend"], key))})
    return out


def machine_section(data: dict[str, Any]) -> list[str]:
    m = data.get("machine_info", {})
    nn = m.get("nnxp", {})
    pools = nn.get("threadpools", [])
    pool_text = ", ".join(f"{p['lib']} ({p['api']}) {p['threads']} threads" for p in pools) \
        if isinstance(pools, list) else str(pools)
    versions = ", ".join(f"{k} {v}" for k, v in nn.get("versions", {}).items())
    torch_threads = nn.get("torch_threads", {})
    commit = data.get("commit_info", {})
    return [
        f"- Date: {data.get('datetime', '?')}; commit {str(commit.get('id', '?'))[:10]}"
        f"{' (uncommitted changes)' if commit.get('dirty') else ''}",
        f"- Machine: {nn.get('cpu', '?')}, {nn.get('cores', '?')} cores; {nn.get('platform', '')}"
        + (f"; GPU: {nn['gpu']}" if nn.get("gpu") else "; no GPU"),
        f"- Threads: {pool_text}; torch intra-op {torch_threads.get('intra_op', '?')}, "
        f"inter-op {torch_threads.get('inter_op', '?')}"
        + (f"; env {nn['env_threads']}" if nn.get("env_threads") else ""),
        f"- Load average at the start: {nn.get('loadavg', '?')} (a shared machine: ratios within "
        "one run are meaningful, absolute times less so)",
        f"- Python {nn.get('python', '?')}; {versions}",
        "- TF32 matmuls (cupy, torch CUDA): "
        + {True: "on", False: "off"}.get(nn.get("tf32"), "not recorded (before TF32 support)"),
        f"- Backends: {', '.join(nn.get('bench_backends', []))}; kernel sizes (batch×width): "
        f"{', '.join(nn.get('bench_sizes', []))}",
    ]


def model_table(rows: list[Row]) -> list[str]:
    lines = ["| model / optimizer | op | backend | nnxp ms | torch ms | torch fused ms | "
             "numpy-by-hand ms | matmul bound ms | nnxp/torch | nnxp/by-hand | bound/nnxp |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for grp in ("step", "epoch"):
        for c in compare(rows, grp):
            r = c["nnxp"]
            bound_share = "" if c["bound"] is None else \
                f"{c['bound']['median'] / r['median']:.0%}"
            lines.append(
                f"| {r['workload']} {r['size'].split('/')[-1]} | {r['op']} | {r['backend']} | "
                f"{_ms(r)} | {_ms(c['torch'])} | {_ms(c['torch-fused'])} | {_ms(c['by-hand'])} | "
                f"{_ms(c['bound'])} | {_ratio(r, c['torch'])} | {_ratio(r, c['by-hand'])} | "
                f"{bound_share} |")
    return lines


def memory_table(rows: list[Row]) -> list[str]:
    mem = [r for r in rows if r.get("group") == "memory"]
    if not mem:
        return ["(no memory rows in this run)"]
    lines = ["| backend | optimizer | params MiB | grads MiB | optimizer state MiB | "
             "cached activations MiB | live set MiB | peak MiB | peak/live | method |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in mem:
        mib = (lambda v: "" if v is None else f"{v / 2**20:.1f}")  # noqa: E731
        lines.append(
            f"| {r['backend']} | {r.get('optimizer', '')} | {mib(r.get('params'))} | "
            f"{mib(r.get('grads'))} | {mib(r.get('optimizer_state'))} | "
            f"{mib(r.get('activations'))} | {mib(r.get('live_bytes'))} | "
            f"{mib(r.get('peak_bytes'))} | "
            f"{'' if r.get('ratio') is None else format(r['ratio'], '.2f')} | {r['method']} |")
    return lines


def kernel_table(rows: list[Row]) -> list[str]:
    lines = ["| kernel | size | backend | nnxp ms | torch ms | torch fused ms | matmul bound ms | "
             "nnxp/torch | nnxp/bound | nnxp GFLOP/s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in compare(rows, "kernel"):
        r = c["nnxp"]
        lines.append(
            f"| {r['workload']}.{r['op']} | {r['size']} | {r['backend']} | {_ms(r)} | "
            f"{_ms(c['torch'])} | {_ms(c['torch-fused'])} | {_ms(c['bound'])} | "
            f"{_ratio(r, c['torch'])} | {_ratio(r, c['bound'])} | {_gflops(r)} |")
    return lines


def gpu_speedups(rows: list[Row]) -> list[tuple[str, str, float]]:
    """(key, GPU backend, numpy time / GPU time) for every nnxp row present on both."""
    cpu = {r["key"]: r for r in rows if r["impl"] == "nnxp" and r["backend"] == "numpy"}
    out = []
    for r in rows:
        if r["impl"] == "nnxp" and r["device"] == "gpu" and r["key"] in cpu \
                and r.get("group") != "memory":
            out.append((r["key"], r["backend"], cpu[r["key"]]["median"] / r["median"]))
    return out


def gpu_table(rows: list[Row]) -> list[str]:
    speed = gpu_speedups(rows)
    if not speed:
        return ["No GPU rows in this run (no GPU on this machine). On a GPU machine, "
                "`NNXP_BENCH_BACKENDS=cupy,torch:cuda,numpy make bench` fills this section."]
    lines = ["| workload | GPU backend | speed-up over numpy (CPU) |", "|---|---|---:|"]
    lines += [f"| {k} | {b} | {s:.1f}× |" for k, b, s in speed]
    return lines


def markdown(data: dict[str, Any], rows: list[Row]) -> str:
    parts = ["# nnxp benchmark results", "", *machine_section(data), "",
             "Times are medians per call in milliseconds. `nnxp/torch` < 1: nnxp is faster than "
             "PyTorch on the same device. `bound/nnxp`: the share of the bare-matmul speed that "
             "the step reaches.", "",
             "## Training step and epoch", "", *model_table(rows), "",
             "## Peak memory while training the big MLP", "", *memory_table(rows), "",
             "## GPU speed-up over the CPU", "", *gpu_table(rows), "",
             "## Kernels", "", *kernel_table(rows), ""]
    return "\n".join(parts)


def chart(rows: list[Row], path: Path) -> None:
    """Bars of nnxp/torch and bound/nnxp per model step and of nnxp/torch per kernel; GPU
    speed-up against the Dense layer's size when GPU rows exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c for c in compare(rows, "step")]
    kernels = [c for c in compare(rows, "kernel") if c["torch"] is not None]
    speed = gpu_speedups(rows)
    n_panels = 3 if speed else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(6.5 * n_panels, max(4.5, 0.22 * len(kernels)
                                                                          / 2 + 2)))
    ax = axes[0]
    labels = [f"{c['nnxp']['workload']} {c['nnxp']['size'].split('/')[-1]} "
              f"[{c['nnxp']['backend']}]" for c in steps]
    ys = range(len(steps))
    peer = [c["nnxp"]["median"] / c["torch"]["median"] if c["torch"] else 0 for c in steps]
    share = [c["bound"]["median"] / c["nnxp"]["median"] if c["bound"] else 0 for c in steps]
    ax.barh([y - 0.2 for y in ys], peer, height=0.4, label="nnxp / torch (time; < 1 is faster)")
    ax.barh([y + 0.2 for y in ys], share, height=0.4, label="bound / nnxp (share of matmul speed)")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(0.75, color="gray", ls="--", lw=0.8, label="target share 0.75")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.set_title("Training step")
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[1]
    cpu_kernels = [c for c in kernels if c["nnxp"]["device"] == "cpu"]
    biggest: dict[tuple[str, str], Any] = {}
    for c in cpu_kernels:  # one bar per kernel and backend: its largest size
        k = (f"{c['nnxp']['workload']}.{c['nnxp']['op']}", c["nnxp"]["backend"])
        biggest[k] = c
    names = sorted(biggest)
    ax.barh(range(len(names)),
            [biggest[k]["nnxp"]["median"] / biggest[k]["torch"]["median"] for k in names])
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(range(len(names)),
                  [f"{k[0]} [{k[1]}] {biggest[k]['nnxp']['size']}" for k in names], fontsize=6)
    ax.set_title("Kernels: nnxp / torch time (log; < 1 is faster)")

    if speed:
        ax = axes[2]
        dense: dict[tuple[str, str], list[tuple[int, float, str]]] = {}
        for key, b, s in speed:
            if key.startswith("dense."):
                size = key.split("[")[1].rstrip("]")
                bsz, w = (int(v) for v in size.split("x"))
                dense.setdefault((b, key.split("[")[0]), []).append((bsz * w, s, size))
        for (b, op), pts in sorted(dense.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{op} [{b}]")
            for p in pts:
                ax.annotate(p[2], (p[0], p[1]), fontsize=6)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("batch × width")
        ax.set_title("GPU speed-up over numpy (> 1: the GPU is faster)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--no-chart", action="store_true")
    args = parser.parse_args(argv)
    data = json.loads(args.json.read_text())
    rows = load_rows(data)
    out = args.out_dir or args.json.parent
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{args.json.stem}.md"
    md.write_text(markdown(data, rows))
    print(f"wrote {md}")
    if not args.no_chart:
        try:
            png = out / f"{args.json.stem}.png"
            chart(rows, png)
            print(f"wrote {png}")
        except ImportError:
            print("matplotlib is not installed: no chart (pip install 'nnxp[plot]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

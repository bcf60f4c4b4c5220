"""The one report writer of the iocpx benchmarks: a dated Markdown report with its raw figures
(.json) and its charts (.png, matplotlib) side by side in bench/results/, and LATEST.md, the
index of the newest report of each kind.

What it shows: nothing by itself; every scenario's section() writes into a Report (see
bench/harness.py main()). Run as a script it re-renders the charts of reports already written,
from their .json, so the committed images always match the committed figures.

What it needs: Python 3.9+; matplotlib for the charts (`pip install matplotlib`; without it the
tables are written and the report says the charts were skipped).

How to run it, from the repo root:

    python bench/report.py bench/results/2026-11-29.json ...   # the charts of these reports
    python bench/report.py --latest                            # rewrite bench/results/LATEST.md
"""

import datetime
import json
import os
import re
import sys

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        return None


class Report:
    """Markdown lines, charts and notes of one report. name: the file prefix ("" for the
    suite, whose files are YYYY-MM-DD.md); meta: harness.main()'s meta."""

    def __init__(self, name, title, meta, quick=False, stem=None):
        self.name, self.title, self.meta, self.quick = name, title, meta, quick
        day = datetime.date.today().isoformat()
        self.stem = stem or ((f"{name}-" if name else "") + day + ("-quick" if quick else ""))
        self.lines = self.head()
        self.notes = []
        self.figures = []           # (file name, matplotlib figure), saved by write()
        self.charts_skipped = False

    def head(self):
        m = self.meta
        out = [f"# {self.title} — {m.get('date', '?')}", ""]
        if "kernel" in m:
            out.append(f"- machine: Linux {m['kernel']}, {m['nproc']} CPUs ({m['cpu']}), "
                       f"{m.get('mem_gib', 0):.0f} GiB, open-files limit {m.get('nofile')}")
        out.append(f"- Python {m.get('python')}, uvloop {m.get('uvloop')}, iocpx {m.get('iocpx')}")
        out.append(f"- tree: {m.get('git')}")
        out.append("- method: server pinned to CPU 0, load generator to CPU 1; the figure is "
                   "server CPU (utime+stime of all its processes and threads, /proc/PID/stat) "
                   "over the measured window per operation")
        if m.get("loadavg_start") is not None:
            out.append(f"- machine load: 1-minute load average {m['loadavg_start']} at the start, "
                       f"{m.get('loadavg_end')} at the end")
        if m.get("command"):
            out.append(f"- command: `{m['command']}` ({m.get('elapsed_min', 0):.1f} min)")
        return out + [""]

    def section(self, title, *paragraphs):
        self.lines += [f"## {title}", ""]
        for p in paragraphs:
            self.lines += [p, ""]

    def table(self, headers, rows, right=None):
        """A Markdown table; `right`: the columns aligned right (default all but the first)."""
        right = set(range(1, len(headers))) if right is None else set(right)
        self.lines.append("| " + " | ".join(headers) + " |")
        self.lines.append("|" + "".join("---:|" if i in right else "---|"
                                        for i in range(len(headers))))
        for row in rows:
            cells = [str(c).replace("\n", " ").replace("|", "\\|") for c in row]
            self.lines.append("| " + " | ".join(cells + [""] * (len(headers) - len(cells))) + " |")
        self.lines.append("")

    def matrix(self, rows, peers, value, base=None, row_name=str, spec=".2f"):
        """The peers-by-rows table of one figure: value(row, peer) -> number or None (or an
        error string); with `base` (a peer id) each cell carries its ratio to that peer's."""
        body = []
        for p in peers:
            cells = []
            for row in rows:
                v = value(row, p)
                b = value(row, base) if base and p.id != base else None
                if v is None or isinstance(v, str):
                    cells.append(v or "-")
                else:
                    cells.append(f"{v:{spec}}" + (f" ({v / b:.2f})" if isinstance(b, float)
                                                  and b else ""))
            body.append([p.label] + cells)
        self.table(["server"] + [row_name(r) for r in rows], body)

    def note(self, text):
        self.notes.append(text)

    def bars(self, key, title, groups, series, ylabel, log=False, size=(13, 5.5)):
        """A grouped bar chart: groups are the x labels, series [(label, [value|None per
        group])]; embedded in the report as an image."""
        plt = _plt()
        if plt is None:
            self.charts_skipped = True
            return
        fig, ax = plt.subplots(figsize=size)
        bar_chart(plt, ax, groups, series, ylabel, log)
        ax.set_title(title)
        if len(series) > 1:
            ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        self.figure(key, title, fig)

    def figure(self, key, title, fig):
        name = f"{self.stem}-{key}.png"
        self.figures.append((name, fig))
        self.lines += [f"![{title}]({name})", ""]

    def render(self):
        notes = list(self.meta.get("warnings") or []) + self.notes
        out = list(self.lines)
        if notes:
            out += ["## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)] + [""]
        if self.charts_skipped:
            out += ["Charts skipped: matplotlib is not installed (pip install matplotlib).", ""]
        return "\n".join(out).rstrip("\n") + "\n"

    def save_figures(self, folder):
        plt = _plt()
        for name, fig in self.figures:
            fig.tight_layout()
            fig.savefig(os.path.join(folder, name), dpi=100)
            plt.close(fig)

    def write(self, payload, out=None, results_dir=RESULTS_DIR):
        """Write NAME-DATE.md, .json and the charts (to `out`'s folder if given), print the
        report, and rewrite LATEST.md unless `out` or --quick. Returns the .md path."""
        if out:
            md, old = out, self.stem
            self.stem = os.path.splitext(os.path.basename(out))[0]
            self.figures = [(n.replace(old, self.stem, 1), f) for n, f in self.figures]
            self.lines = [ln.replace(f"]({old}-", f"]({self.stem}-") for ln in self.lines]
        else:
            md = os.path.join(results_dir, self.stem + ".md")
        folder = os.path.dirname(os.path.abspath(md))
        os.makedirs(folder, exist_ok=True)
        text = self.render()
        with open(md, "w") as f:
            f.write(text)
        with open(os.path.splitext(md)[0] + ".json", "w") as f:
            json.dump(payload, f, indent=1, default=repr)
        self.save_figures(folder)
        if not out and not self.quick:
            write_latest(results_dir)
        sys.stdout.write(text)
        print(f"wrote {md}" + (f" and {len(self.figures)} charts" if self.figures else ""),
              file=sys.stderr, flush=True)
        return md


def bar_chart(plt, ax, groups, series, ylabel, log=False):
    import matplotlib.ticker
    n = max(1, len(series))
    width = 0.8 / n
    palette = plt.get_cmap("tab10")
    for i, (label, vals) in enumerate(series):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ax.bar(xs, [v if isinstance(v, (int, float)) else 0 for v in vals], width, label=label,
               color=palette(i % 10))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, fontsize=8)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(axis="y", alpha=0.3, which="both" if log else "major")


# ---- bench/results/LATEST.md ----

REPORT_FILE = re.compile(r"^(?:(?P<name>[a-z][\w-]*?)-)?(?P<day>\d{4}-\d{2}-\d{2})\.md$")


def write_latest(results_dir=RESULTS_DIR):
    """Rewrite results_dir/LATEST.md: a link to the newest full report of each kind (by file
    name: NAME-YYYY-MM-DD.md), with its title, date and tree, never a copy of one."""
    newest = {}
    for n in sorted(os.listdir(results_dir)):
        m = REPORT_FILE.match(n)
        if m:
            newest[m.group("name") or ""] = n
    lines = ["# Latest benchmark reports", "",
             "The newest full report of each kind (rewritten by the bench scripts after a full "
             "run; `--quick` runs do not count). Each report's charts sit beside it.", ""]
    for _, n in sorted(newest.items()):
        title = date = tree = ""
        with open(os.path.join(results_dir, n)) as f:
            for line in f:
                if line.startswith("# ") and "—" in line:
                    title, date = (x.strip() for x in line[2:].split("—", 1))
                elif line.startswith("- tree: "):
                    tree = line[len("- tree: "):].strip()
                    break
        lines.append(f"- {title or n}: [{n}]({n})" + (f", {date}" if date else "")
                     + (f", {tree}" if tree else ""))
    with open(os.path.join(results_dir, "LATEST.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ---- charts of reports already written ----

def _median(runs, key):
    ok = sorted((r for r in runs if r.get(key)), key=lambda r: r[key])
    return dict(ok[(len(ok) - 1) // 2]) if ok else dict(runs[0], error="failed")


def _old_real_clients(payload):
    """real_clients.py's JSON before the harness (every run, not the medians) -> results."""
    out = []
    for entry in payload["runs"]:
        workload, spec = entry["row"].split(":")
        r = _median(entry["runs"], "cpu_us_per_req")
        m = re.match(r"(\w+)-P(\d+)$", spec)
        r.update({"test": m.group(1), "pipeline": int(m.group(2))} if m
                 else {"conns": int(spec[1:])})
        label = payload.get("labels", {}).get(entry["server"], {}).get(workload, entry["server"])
        out.append(dict(r, workload=workload, peer=entry["server"], label=label))
    return out


def _old_rows(rows, peer_of=lambda r: r["label"]):
    return [dict(r, peer=r.get("peer") or peer_of(r)) for r in rows]


def _timers(payload):
    import timers
    out = []
    for r in payload.get("rows") or payload["results"]["timers"]:
        if "us_per_timer" not in r and "runs_us" in r:
            runs = sorted(r["runs_us"])
            r = dict(r, us_per_timer=runs[(len(runs) - 1) // 2], peer=r["impl"],
                     label=timers.IMPLS[r["impl"]])
        out.append(r)
    return out


def charts_for(stem, payload):
    """[(scenario module, its results)] of a report's JSON, written by a bench script before or
    after the harness: what chart_existing() draws."""
    import churn, echo, idle, real_clients, stress, timers, tls, udp_echo  # noqa: E401
    res = payload.get("results")
    name = REPORT_FILE.match(stem + ".md")
    name = name.group("name") if name else stem
    if not name:                # the suite: YYYY-MM-DD
        return [(m, res[m.NAME]) for m in (echo, churn, idle, stress) if res.get(m.NAME)]
    if name == "real-clients":
        return [(real_clients, res["real-clients"] if res else _old_real_clients(payload))]
    if name == "udp":
        return [(udp_echo, res["udp"] if res else _old_rows(
            payload["rows"], lambda r: "uvloop" if r["kind"] == "uvloop-udp" else r["label"]))]
    if name == "tls":
        if res:
            return [(tls, res["tls"])]
        return [(tls, [dict(r, peer=r["row"][2], part="echo") for r in payload["echo"]])]
    if name == "timers":
        return [(timers, _timers(payload))]
    mod = {"echo": echo, "churn": churn, "idle": idle, "stress": stress}.get(name)
    return [(mod, res[name])] if mod and res else []


def chart_existing(path):
    """Render the charts of a report already written (its .json) beside it, with the chart
    code of the scenario that wrote it; returns the image names."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with open(path) as f:
        payload = json.load(f)
    stem = os.path.splitext(os.path.basename(path))[0]
    rep = Report("", "", payload.get("meta", {}), stem=stem)
    for mod, results in charts_for(stem, payload):
        mod.charts(rep, results)
    rep.save_figures(os.path.dirname(os.path.abspath(path)))
    return [name for name, _ in rep.figures]


if __name__ == "__main__":
    if sys.argv[1:] == ["--latest"]:
        write_latest()
    elif not sys.argv[1:] or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    else:
        for p in sys.argv[1:]:
            print(p, "->", ", ".join(chart_existing(p)) or "no charts")

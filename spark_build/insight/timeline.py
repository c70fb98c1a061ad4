"""`invoke report --html FILE`: the trace drawn as one self-contained page.

Apart from the report because it draws `trace.json` only (no summary, no Ninja), and because a
DGX Spark on a closed network still needs a viewer: inline SVG, no script, nothing fetched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from typing import Any

from spark_build.pipeline.progress import fmt_seconds

_STATUS_COLOUR = {"done": "#4c9f70", "failed": "#d64545", "interrupted": "#e08a2e"}


def timeline_html(doc: Mapping[str, Any], title: str, report: str = "") -> str:
    """The trace drawn as one self-contained page (inline SVG; no script, no network): a DGX
    Spark on an isolated network cannot load Perfetto's UI, but any browser opens this.
    `report` is `invoke report`'s text (the figures, a failed run's error), shown above the drawing."""
    events = doc.get("traceEvents", [])
    meta = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] in ("process_name", "thread_name")}
    tracks = sorted({(e["pid"], e["tid"]) for e in events if e["ph"] in ("X", "i")})
    counters = sorted({(e["pid"], e["name"]) for e in events if e["ph"] == "C"})
    end = max([e["ts"] + e.get("dur", 0) for e in events if "ts" in e] + [1])
    label_w, plot_w, row_h, chart_h = 190, 1180, 20, 56
    scale = plot_w / end
    body: list[str] = []
    y = 30
    last_pid = None
    for pid, tid in tracks:
        if pid != last_pid:
            body.append(f'<text x="4" y="{y + 14}" class="proc">{escape(str(meta.get((pid, 0), pid)))}</text>')
            y, last_pid = y + row_h, pid
        body.append(f'<text x="14" y="{y + 14}">{escape(str(meta.get((pid, tid), tid)))}</text>')
        for e in (e for e in events if e["ph"] in ("X", "i") and (e["pid"], e["tid"]) == (pid, tid)):
            x = label_w + e["ts"] * scale
            tip = escape(f"{e['name']} — {json.dumps(e.get('args', {}))}")
            if e["ph"] == "X":
                w = max(1.0, e["dur"] * scale)
                colour = _STATUS_COLOUR.get(e["args"].get("status", "done"), "#888")
                if e.get("cat") == "compile":
                    colour = "#4a7fc1" if e["args"].get("peak_rss_bytes") is None else "#7b5cc4"
                body.append(
                    f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" fill="{colour}">'
                    f"<title>{tip}</title></rect>"
                )
                if w > 7 * len(e["name"]):
                    body.append(f'<text x="{x + 3:.1f}" y="{y + 14}" class="in">{escape(e["name"])}</text>')
            else:
                body.append(f'<path d="M{x:.1f} {y + 2}v{row_h - 4}" class="mark"><title>{tip}</title></path>')
        y += row_h
    for pid, name in counters:
        if pid != last_pid:
            body.append(f'<text x="4" y="{y + 14}" class="proc">{escape(str(meta.get((pid, 0), pid)))}</text>')
            y, last_pid = y + row_h, pid
        series = [e for e in events if e["ph"] == "C" and e["name"] == name and e["pid"] == pid]
        unit = next(iter(series[0]["args"]))
        points = sorted((e["ts"], e["args"][unit]) for e in series)
        top = max(v for _, v in points) or 1
        xy = [(label_w + ts * scale, y + chart_h - v / top * (chart_h - 8)) for ts, v in points]
        path = f"M{xy[0][0]:.1f} {xy[0][1]:.1f}" + "".join(f"H{px:.1f}V{py:.1f}" for px, py in xy[1:])
        body.append(f'<text x="14" y="{y + 14}">{escape(name)} (max {top:g} {escape(unit)})</text>')
        body.append(f'<path d="{path}" class="counter"/>')
        y += chart_h
    step = _tick_step(end / 1e6)
    ticks = [t * step for t in range(int(end / 1e6 / step) + 1)]
    axis = "".join(
        f'<path d="M{label_w + t * 1e6 * scale:.1f} 22V{y}" class="grid"/>'
        f'<text x="{label_w + t * 1e6 * scale + 2:.1f}" y="18">{fmt_seconds(t)}</text>'
        for t in ticks
    )
    width = label_w + plot_w + 20
    figures = f"<pre>{escape(report)}</pre>" if report else ""
    return (
        f"<!doctype html><meta charset='utf-8'><title>{escape(title)}</title>"
        "<style>body{margin:8px;font:12px sans-serif}svg text{font-size:12px}.proc{font-weight:bold}"
        ".in{fill:#fff;font-size:11px}.mark{stroke:#d00;stroke-width:2}.grid{stroke:#ddd}"
        ".counter{fill:none;stroke:#c05a1b;stroke-width:1.5}</style>"
        f"<h3>{escape(title)}</h3>{figures}<p>steps: green done, red failed, orange interrupted · compile slots: one "
        "object per bar, purple where its peak memory is known · red marks: skipped steps and governor events · "
        f"hover for details</p><svg width='{width}' height='{y + 10}' xmlns='http://www.w3.org/2000/svg'>"
        f"{axis}{''.join(body)}</svg>"
    )


def _tick_step(total_s: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if total_s / step <= 12:
            return float(step)
    return 7200.0

"""A self-contained HTML report: per-layer tables and hand-made SVG charts, one file that opens offline.

A table of 200 numbers hides the shape of the failure; a chart of COS and RMSE along the graph shows at a
glance whether error jumps at one layer (abrupt) or climbs steadily (gradual), and whether the layer's own
error (dashed) explains the jump. No plotting library and no external asset: the file is mailed, attached
to CI runs and opened years later.

Both charts use a log scale of the distance to a perfect value (1 - cos and rmse), labelled in the metric's
own units, so 0.99 vs 0.999 stays readable next to a layer at cos 0.1.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable

from ..engine.results import Comparison, LayerResult, ModelResult, PASSED, Status
from ..remedy.fixfile import patch_yaml
from .numbers import fmt_num





_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:18px;margin:28px 0 6px;border-bottom:1px solid #d8dde6;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px} .meta{color:#5b6573;font-size:13px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.passed{background:#2e7d32}.failed{background:#c62828}.xfailed{background:#ef6c00}.xpassed{background:#6a1b9a}
.skipped{background:#78909c}
table{border-collapse:collapse;font-size:13px;margin:6px 0} th,td{padding:3px 10px;text-align:right;border-bottom:1px solid #eceff3}
th{background:#f4f6f9;position:sticky;top:0} td.l,th.l{text-align:left}
tr.row-failed td{background:#fdecea} tr.row-xfailed td{background:#fff3e0} tr.first td{font-weight:700}
.diag{border-left:4px solid #c62828;background:#fafbfc;padding:8px 14px;margin:10px 0}
.diag.gradual{border-color:#ef6c00} .diag ul{margin:4px 0 8px 18px;padding:0} .diag li{margin:2px 0}
pre{background:#f4f6f9;padding:8px 12px;border-radius:4px;font-size:13px;overflow-x:auto}
.chart{overflow-x:auto} .legend{font-size:12px;color:#5b6573}
"""

_ACC, _OWN, _THR, _MARK = "#1565c0", "#ef6c00", "#c62828", "#c62828"


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _axis_values(kind: str) -> tuple[Callable[[float], float], list[tuple[float, str]], float, float]:
    """Map a metric value to log10 of its distance from perfect; ticks; and the plotted range."""
    if kind == "cos":
        def f(v: float) -> float:
            return math.log10(min(max(1.0 - v, 1e-6), 1.0))
        ticks = [(f(c), lab) for c, lab in ((0.0, "0"), (0.9, "0.9"), (0.99, "0.99"), (0.999, "0.999"),
                                            (0.9999, "0.9999"), (0.99999, "0.99999"))]
        return f, ticks, -5.0, 0.0

    def g(v: float) -> float:
        return math.log10(min(max(v, 1e-5), 10.0))
    ticks = [(g(r), lab) for r, lab in ((1e-4, "0.0001"), (1e-3, "0.001"), (1e-2, "0.01"), (0.1, "0.1"),
                                        (1.0, "1"), (10.0, "10"))]
    return g, ticks, -4.0, 1.0


def chart(comparison: Comparison, kind: str) -> str:
    """An inline SVG of one metric along the compared layers: accumulated, own, threshold, first divergence."""
    rows = [r for r in comparison.layers if r.summary is not None and r.status != "skipped"]
    if not rows:
        return ""
    f, ticks, lo, hi = _axis_values(kind)
    step = 34 if len(rows) < 30 else 18
    left, right, top, bottom = 64, 20, 26, 96
    width = left + right + step * max(len(rows) - 1, 1)
    width = max(width, 880)
    height = 270
    plot_h = height - top - bottom
    x_step = (width - left - right) / max(len(rows) - 1, 1)

    def x(i: int) -> float:
        return left + i * x_step if len(rows) > 1 else left + (width - left - right) / 2

    def y(v: float) -> float:
        t = (f(v) - lo) / (hi - lo)
        t = min(max(t, 0.0), 1.0)
        # cos: perfect (distance 1e-6) at the top; rmse: perfect (1e-5) at the bottom
        return top + (t * plot_h if kind == "cos" else (1 - t) * plot_h)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height}" '
           f'viewBox="0 0 {width:.0f} {height}" role="img" aria-label="{kind} per layer" '
           f'style="font-family:system-ui,sans-serif;font-size:11px">']
    out.append(f'<text x="{left}" y="14" font-weight="600" font-size="12">'
               f'{"COS" if kind == "cos" else "relative RMSE"} along the graph</text>')
    for pos, label in ticks:
        t = (pos - lo) / (hi - lo)
        if not 0 <= t <= 1:
            continue
        yy = top + (t * plot_h if kind == "cos" else (1 - t) * plot_h)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eceff3"/>')
        out.append(f'<text x="{left - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#5b6573">{label}</text>')
    first = comparison.first_diverging
    for i, r in enumerate(rows):
        if r is first:
            out.append(f'<rect x="{x(i) - x_step / 2:.1f}" y="{top}" width="{x_step:.1f}" height="{plot_h}" '
                       f'fill="{_MARK}" fill-opacity="0.08"/>')
            out.append(f'<text x="{x(i):.1f}" y="{top - 4}" text-anchor="middle" fill="{_MARK}" '
                       f'font-weight="600">first diverging</text>')
    thr = [(x(i), y(getattr(r.thresholds, kind))) for i, r in enumerate(rows)]
    out.append(_polyline(thr, _THR, dash="5,4", width=1.2))
    acc = [(x(i), y(r.summary[kind])) for i, r in enumerate(rows)]
    out.append(_polyline(acc, _ACC, width=2))
    own_pts = [(x(i), y(r.own[kind])) for i, r in enumerate(rows) if r.own is not None]
    if own_pts:
        out.append(_polyline(own_pts, _OWN, dash="4,3", width=1.6))
    for i, r in enumerate(rows):
        bad = not r.thresholds.passes(r.summary["cos"], r.summary["rmse"])
        out.append(f'<circle cx="{x(i):.1f}" cy="{y(r.summary[kind]):.1f}" r="3.2" fill="{_THR if bad else _ACC}">'
                   f'<title>{_e(r.layer.name)} ({_e(r.layer.op_type)}): {kind} {fmt_num(r.summary[kind])}'
                   f'{"" if r.own is None else f", own {fmt_num(r.own[kind])}"}</title></circle>')
        if r.own is not None:
            out.append(f'<circle cx="{x(i):.1f}" cy="{y(r.own[kind]):.1f}" r="2.4" fill="#fff" stroke="{_OWN}"/>')
    for i, r in enumerate(rows):
        weight = ' font-weight="700"' if r is first else ""
        out.append(f'<text transform="translate({x(i):.1f},{height - bottom + 12}) rotate(-40)" text-anchor="end"'
                   f' fill="{_MARK if r is first else "#1d2430"}"{weight}>{_e(_short(r.layer.name))}</text>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" stroke="#9aa3af"/>')
    out.append("</svg>")
    return "\n".join(out)


def _short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else "\u2026" + name[-(n - 1):]


def _polyline(points: list[tuple[float, float]], color: str, dash: str | None = None, width: float = 1.5) -> str:
    pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}"{d}/>'


def _row(r: LayerResult, first: LayerResult | None) -> str:
    s, own = r.summary, r.own
    cls = f"row-{r.status}" + (" first" if r is first else "")
    status = r.status + (f" (from {r.inherited_from})" if r.inherited_from else "")
    cells = [f'<td class="l">{"&rarr; " if r is first else ""}{_e(r.layer.name)}</td>',
             f'<td class="l">{_e(r.layer.op_type)}</td>',
             f"<td>{fmt_num(s['cos'] if s else None)}</td>", f"<td>{fmt_num(s['rmse'] if s else None)}</td>",
             f"<td>{fmt_num(own['cos'] if own else None)}</td>", f"<td>{fmt_num(own['rmse'] if own else None)}</td>",
             f"<td>{fmt_num(s.worst['cos'] if s else None)}</td>",
             f"<td>{fmt_num(r.thresholds.cos, 3)} / {fmt_num(r.thresholds.rmse, 3)}</td>",
             f'<td class="l"><span class="badge {r.status}">{_e(status)}</span></td>']
    title = f' title="{_e(r.reason)}"' if r.reason else ""
    return f'<tr class="{cls}"{title}>' + "".join(cells) + "</tr>"


def _table(comparison: Comparison) -> str:
    rows = [r for r in comparison.layers if r.status != "skipped"]
    head = ('<tr><th class="l">layer</th><th class="l">op</th><th>cos</th><th>rmse</th><th>own cos</th>'
            '<th>own rmse</th><th>worst cos</th><th>thresholds</th><th class="l">status</th></tr>')
    body = "".join(_row(r, comparison.first_diverging) for r in rows)
    skipped = len(comparison.layers) - len(rows)
    note = f'<div class="meta">{skipped} layers not compared (fused or not quantized; hover a row for reasons).</div>' \
        if skipped else ""
    return f"<table>{head}{body}</table>{note}"


def _diagnosis(comparison: Comparison) -> str:
    d = comparison.diagnosis
    if d is None:
        return ""
    parts = [f'<div class="diag {_e(d.kind or "")}"><b>Diagnosis: {_e(d.kind)} at {_e(d.layer)}</b>']
    if d.contributors and d.kind == "gradual":
        parts.append(f'<div class="meta">largest own errors: {_e(", ".join(d.contributors))}</div>')
    parts.append("<ul>" + "".join(f"<li>{_e(w)}</li>" for w in d.why) + "</ul>")
    if d.remedy is not None:
        parts.append("<b>Verified remedy</b> (every layer passes; paste into the model entry):")
        parts.append(f"<pre>{_e(patch_yaml(d.remedy))}</pre>")
    else:
        parts.append("<b>What to do</b><ul>" + "".join(f"<li>{_e(t)}</li>" for t in d.todo) + "</ul>")
    if d.attempts:
        rows = "".join(
            f'<tr class="{"" if a.passes else "row-failed"}"><td class="l">{_e(a.label)}</td>'
            f'<td class="l"><span class="badge {"passed" if a.passes else "failed"}">'
            f'{"passes" if a.passes else "fails"}</span></td><td class="l">{_e(a.first_diverging_layer or "-")}</td>'
            f"<td>{fmt_num(a.layer_cos)}</td><td>{fmt_num(a.layer_rmse)}</td><td>{fmt_num(a.outputs_cos)}</td>"
            f"<td>{a.seconds:.2f}</td>{_cost_cells(a)}</tr>" for a in d.attempts)
        parts.append('<h3>Remedies tried</h3><table><tr><th class="l">remedy</th><th class="l">result</th>'
                     f'<th class="l">first diverging</th><th>{_e(d.layer)} cos</th><th>{_e(d.layer)} rmse</th>'
                     f"<th>outputs cos</th><th>s</th><th>ms (int8 / float)</th><th>int8 MACs</th>"
                     f'<th class="l">note</th></tr>{rows}</table>')
    parts.append(_sensitivity(d))
    parts.append("</div>")
    return "".join(parts)


def _cost_cells(a) -> str:
    """Latency beside int8 and float, the MAC share left at int8, and the attempt's labels (harmful, slow)."""
    c = a.cost or {}
    notes = (["harmful"] if a.harmful else []) + (["slower than float"] if c.get("slower_than_float") else [])
    lat = (f"{c['latency_ms']:.3g} ({c['latency_int8_ms']:.3g} / {c['latency_float_ms']:.3g})"
           if "latency_ms" in c else "-")
    share = f"{100 * c['shares']['macs_8']:.1f}%" if "shares" in c else "-"
    return f'<td>{lat}</td><td>{share}</td><td class="l">{_e(", ".join(notes))}</td>'


def _sensitivity(d) -> str:
    """The most sensitive sites as horizontal bars (score relative to the largest) and the search's curve."""
    rows = list(d.sensitivity[:12])
    if not rows:
        return ""
    top = max(max(r["score"] for r in rows), 1e-12)
    bars = "".join(
        f'<tr><td class="l">{_e(r["site"])}</td><td class="l">{_e(r["kind"])}</td><td class="l">{_e(r["node"])}</td>'
        f'<td>{fmt_num(r["score"])}</td><td class="l"><div style="background:#c0392b;height:0.8em;'
        f'width:{max(0.0, r["score"]) / top * 200:.0f}px"></div></td></tr>' for r in rows)
    out = [f'<h3>Sensitivity ({_e(rows[0]["metric"])}, quantized alone; most sensitive first)</h3>'
           '<table><tr><th class="l">site</th><th class="l">kind</th><th class="l">node</th><th>score</th>'
           f'<th class="l"></th></tr>{bars}</table>']
    curve = (d.search or {}).get("curve", ())
    if curve:
        body = "".join(f'<tr class="{"" if c["passes"] else "row-failed"}"><td>{c["k"]}</td><td class="l">'
                       f'{_e(c["level"])}</td><td>{fmt_num(c["margin"])}</td><td class="l">'
                       f'{_e(c["first_diverging_layer"] or "-")}</td><td>{fmt_num(c["outputs_cos"])}</td></tr>'
                       for c in curve)
        out.append('<h3>Sets judged (k sites raised)</h3><table><tr><th>k</th><th class="l">level</th>'
                   f'<th>gate margin</th><th class="l">first diverging</th><th>outputs cos</th></tr>{body}</table>')
    return "".join(out)


def model_section(result: ModelResult, verdict: Status | None = None) -> str:
    """One model's part of the report (also what a pytest-html extra shows); ``verdict`` includes the CI gates."""
    s = result.spec
    status = verdict or result.status
    out = [f'<h2>{_e(s.name)} <span class="badge {status}">{_e(status)}</span></h2>',
           f'<div class="meta">{_e(s.spec_path)} &middot; {result.quantized_layers} quantized tensors &middot; '
           f'{result.samples} samples &middot; {_e(s.quantization.activations)} activations, '
           f'{_e(s.quantization.weights)} weights, {_e(s.quantization.method)}'
           f'{", per-channel" if s.quantization.per_channel else ""}</div>']
    if result.error is not None:
        out.append(f"<pre>{_e(result.error.message)}</pre>")
        return "\n".join(out)
    for c in result.comparisons:
        out.append(f"<h3>{_e(c.reference)} vs {_e(c.target)}: first diverging layer: "
                   f"{_e(c.first_diverging.layer.name if c.first_diverging else 'none')}</h3>")
        if c.target == "fixed":
            out.append(f'<div class="legend"><span style="color:{_ACC}">&#9679;&mdash; accumulated</span> &nbsp; '
                       f'<span style="color:{_OWN}">&#9675;- - own (layer fed with float inputs)</span> &nbsp; '
                       f'<span style="color:{_THR}">- - threshold</span> &nbsp; red dots break a threshold</div>')
            out.append(f'<div class="chart">{chart(c, "cos")}</div><div class="chart">{chart(c, "rmse")}</div>')
            out.append(_diagnosis(c))
        out.append(_table(c))
    a = result.agreement
    if a is not None and a.worst is not None:
        w = a.worst
        out.append(f"<h3>{a.reference} vs {a.target}: {'passed' if a.passed else 'FAILED'}</h3><div class='meta'>worst "
                   f"{_e(w.tensor)}: {100 * w.mismatch_rate:.2f}% of elements beyond {a.tolerance_steps} steps, "
                   f"max {w.max_steps}</div>")
    return "\n".join(out)


def _scoped_css(scope: str) -> str:
    """The page's CSS limited to one element, for embedding in someone else's page (pytest-html)."""
    rules = []
    for rule in _CSS.replace("\n", "").split("}"):
        if "{" not in rule:
            continue
        selectors, body = rule.split("{", 1)
        scoped = ",".join(scope if sel.strip() == "body" else f"{scope} {sel.strip()}" for sel in selectors.split(","))
        rules.append(f"{scoped}{{{body}}}")
    return "\n".join(rules)


def fragment(result: ModelResult, verdict: Status | None = None) -> str:
    """One model's section with its own scoped style: what a pytest-html extra shows."""
    return f'<div class="quantacc"><style>{_scoped_css(".quantacc")}</style>{model_section(result, verdict)}</div>'


def page(results: list[ModelResult], title: str = "pytest-quantacc report",
         verdicts: list[Status] | None = None) -> str:
    """The whole report; ``verdicts`` (one per result, including the CI gates) default to the results' own."""
    verdicts = verdicts or [r.status for r in results]
    failed = sum(v != PASSED for v in verdicts)
    body = "\n".join(model_section(r, v) for r, v in zip(results, verdicts))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
            f'<h1>{_e(title)}</h1><div class="meta">{len(results)} models, {failed} failing</div>\n{body}\n'
            f"</body></html>\n")

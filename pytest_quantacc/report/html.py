"""A self-contained HTML report that stays readable at 1,000 layers: one file, no external asset.

A table of 300 numbers hides the shape of the failure; a chart of COS and RMSE along the graph shows at a
glance whether error jumps at one layer (abrupt) or climbs steadily (gradual), and whether the layer's own
error (dashed) explains the jump. At hundreds of layers a chart with one labelled dot per layer is thousands
of pixels wide and mostly red, so each model gets:

- an overview per metric that fits the page width (its y-axis never scrolls away), with the first diverging
  layer (the root cause) and the layers whose *own* error breaks the thresholds marked, and a status strip
  (failed / xfailed / passed) under it instead of colouring every dot;
- a detail chart of a window of layers with their names, zoomed and moved by a slider or a click on the
  overview (inline JavaScript drawing from the data embedded in the page);
- the layer table, sortable by any column and filterable (failed only, own error breaks, name), and the
  fixed-vs-offline table of every tensor.

A summary table of the models comes first, failing models first, otherwise in the terminal's order. No
plotting library and no external asset: the file is mailed, attached to CI runs and opened years later.
pytest-html embeds :func:`fragment` (static: its extras do not run scripts) and :func:`one_row`.

Both metrics use a log scale of the distance to a perfect value (1 - cos and rmse), labelled in the metric's
own units, so 0.99 vs 0.999 stays readable next to a layer at cos 0.1.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable

from ..engine.results import FAILED, PASSED, SKIPPED, XFAILED, XPASSED, Comparison, LayerResult, ModelResult, Status
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
th{background:#f4f6f9;position:sticky;top:0} td.l,th.l{text-align:left} th.s{cursor:pointer} th.s:hover{background:#e4e8ee}
tr.row-failed td{background:#fdecea} tr.row-xfailed td{background:#fff3e0} tr.root td{font-weight:700}
.diag{border-left:4px solid #c62828;background:#fafbfc;padding:8px 14px;margin:10px 0}
.diag.gradual{border-color:#ef6c00} .diag ul{margin:4px 0 8px 18px;padding:0} .diag li{margin:2px 0}
pre{background:#f4f6f9;padding:8px 12px;border-radius:4px;font-size:13px;overflow-x:auto}
svg.ov{width:100%;height:auto;display:block;max-width:1400px} .legend{font-size:12px;color:#5b6573}
.tools{font-size:13px;margin:8px 0} .tools label{margin-right:14px} .scroll{max-height:520px;overflow:auto}
input.zoom{width:100%;max-width:1400px} .detail svg{width:100%;height:auto;max-width:1400px;display:block}
"""

_ACC, _OWN, _THR, _ROOT, _CULPRIT = "#1565c0", "#ef6c00", "#c62828", "#b71c1c", "#6a1b9a"
_STATUS_COLOUR = {FAILED: "#e53935", XFAILED: "#fb8c00", PASSED: "#43a047", "xpassed": "#8e24aa"}
_VIEW_W, _LEFT, _RIGHT, _TOP, _PLOT_H = 1000, 58, 12, 8, 120  # overview geometry, in viewBox units
_DETAIL = 40  # layers in the detail window

# The detail chart and the table's sorting and filters: drawn from the JSON embedded in each model's section.
_JS = r"""
(function(){
function f(kind,v){return kind=='cos'?Math.log10(Math.min(Math.max(1-v,1e-6),1)):Math.log10(Math.min(Math.max(v,1e-5),10));}
function y(kind,v,top,h){var lo=kind=='cos'?-5:-4,hi=kind=='cos'?0:1,t=Math.min(Math.max((f(kind,v)-lo)/(hi-lo),0),1);
 return top+(kind=='cos'?t*h:(1-t)*h);}
function esc(s){return String(s).replace(/[&<>"]/g,function(c){return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c];});}
var TICKS={cos:[[0,'0'],[0.9,'0.9'],[0.99,'0.99'],[0.999,'0.999'],[0.9999,'0.9999']],
 rmse:[[1e-4,'0.0001'],[1e-3,'0.001'],[1e-2,'0.01'],[0.1,'0.1'],[1,'1'],[10,'10']]};
function detail(kind,rows,start){
 var W=1000,L=58,R=12,T=22,H=150,B=110,n=rows.length,step=(W-L-R)/Math.max(n-1,1),o=[];
 function x(i){return n>1?L+i*step:L+(W-L-R)/2;}
 o.push('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 '+W+' '+(T+H+B)+'" style="font-size:11px">');
 o.push('<text x="'+L+'" y="14" font-weight="600">'+(kind=='cos'?'COS':'relative RMSE')+', layers '+(start+1)+'-'+(start+n)+'</text>');
 TICKS[kind].forEach(function(t){var yy=y(kind,t[0],T,H);o.push('<line x1="'+L+'" x2="'+(W-R)+'" y1="'+yy+'" y2="'+yy+'" stroke="#eceff3"/><text x="'+(L-6)+'" y="'+(yy+4)+'" text-anchor="end" fill="#5b6573">'+t[1]+'</text>');});
 var ci=kind=='cos'?2:3,oi=kind=='cos'?4:5,ti=kind=='cos'?7:8;
 function line(idx,col,dash){var p=[];rows.forEach(function(r,i){if(r[idx]!==null)p.push(x(i).toFixed(1)+','+y(kind,r[idx],T,H).toFixed(1));});
  return '<polyline fill="none" stroke="'+col+'" stroke-width="1.6"'+(dash?' stroke-dasharray="'+dash+'"':'')+' points="'+p.join(' ')+'"/>';}
 o.push(line(ti,'#c62828','5,4'),line(ci,'#1565c0',''),line(oi,'#ef6c00','4,3'));
 rows.forEach(function(r,i){var cx=x(i).toFixed(1),cy=y(kind,r[ci],T,H).toFixed(1),col=r[6]=='failed'?'#e53935':r[6]=='xfailed'?'#fb8c00':'#1565c0';
  if(r[9]=='root')o.push('<line x1="'+cx+'" x2="'+cx+'" y1="'+T+'" y2="'+(T+H)+'" stroke="#b71c1c" stroke-width="2" stroke-opacity="0.5"/>');
  o.push('<circle cx="'+cx+'" cy="'+cy+'" r="'+(r[9]?4.5:3)+'" fill="'+col+'"'+(r[9]=='own'?' stroke="#6a1b9a" stroke-width="2"':'')+'><title>'+esc(r[0])+' ('+esc(r[1])+'): '+kind+' '+r[ci]+(r[oi]!==null?', own '+r[oi]:'')+' - '+r[6]+(r[9]=='root'?', first diverging':r[9]=='own'?', own error breaks':'')+'</title></circle>');
  var lab=r[0].length>22?'\u2026'+r[0].slice(-21):r[0];
  o.push('<text transform="translate('+cx+','+(T+H+12)+') rotate(-40)" text-anchor="end"'+(r[9]?' fill="#b71c1c" font-weight="700"':'')+'>'+esc(lab)+'</text>');});
 o.push('</svg>');return o.join('');}
document.querySelectorAll('.qa-model').forEach(function(sec){
 var data=sec.querySelector('script.qa-data'),slider=sec.querySelector('input.zoom'),out=sec.querySelector('.detail');
 if(data&&slider&&out){var rows=JSON.parse(data.textContent),win=+slider.dataset.win;
  var draw=function(){var s=+slider.value;out.innerHTML=detail('cos',rows.slice(s,s+win),s)+detail('rmse',rows.slice(s,s+win),s);};
  slider.addEventListener('input',draw);
  sec.querySelectorAll('svg.ov').forEach(function(svg){svg.addEventListener('click',function(e){var b=svg.getBoundingClientRect(),
   u=(e.clientX-b.left)/b.width*1000,i=Math.round((u-58)/(1000-58-12)*(rows.length-1));
   slider.value=Math.max(0,Math.min(rows.length-win,i-Math.floor(win/2)));draw();});});
  var root=rows.findIndex(function(r){return r[9]=='root';});slider.value=Math.max(0,Math.min(rows.length-win,root-Math.floor(win/2)));draw();}
 var table=sec.querySelector('table.qa-layers');if(!table)return;
 var body=table.tBodies[0],boxes=sec.querySelectorAll('.tools input');
 function filter(){var failed=sec.querySelector('input.f-failed').checked,own=sec.querySelector('input.f-own').checked,
  text=sec.querySelector('input.f-name').value.toLowerCase(),shown=0;
  Array.prototype.forEach.call(body.rows,function(tr){var ok=(!failed||tr.dataset.status=='failed'||tr.dataset.status=='xfailed')&&(!own||tr.dataset.own=='1')&&(!text||tr.cells[1].textContent.toLowerCase().indexOf(text)>=0);
   tr.style.display=ok?'':'none';if(ok)shown++;});sec.querySelector('.f-count').textContent=shown+' of '+body.rows.length+' layers shown';}
 boxes.forEach(function(b){b.addEventListener('input',filter);});
 table.querySelectorAll('th.s').forEach(function(th,col){th.addEventListener('click',function(){var asc=th.dataset.dir!='asc';th.dataset.dir=asc?'asc':'desc';
  var idx=Array.prototype.indexOf.call(th.parentNode.cells,th),rs=Array.prototype.slice.call(body.rows);
  rs.sort(function(a,b){var x=a.cells[idx].dataset.v,y=b.cells[idx].dataset.v;x=x===undefined?a.cells[idx].textContent:x;y=y===undefined?b.cells[idx].textContent:y;
   var nx=parseFloat(x),ny=parseFloat(y),c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:String(x).localeCompare(String(y));return asc?c:-c;});
  rs.forEach(function(r){body.appendChild(r);});});});
 filter();});
})();
"""


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


def _compared(comparison: Comparison) -> list[LayerResult]:
    return [r for r in comparison.layers if r.summary is not None and r.status != SKIPPED]


def is_root(r: LayerResult, comparison: Comparison) -> bool:
    """``r`` is the comparison's first diverging layer (by tensor: results rebuilt from the cache are copies)."""
    first = comparison.first_diverging
    return first is not None and r.layer.tensor == first.layer.tensor


def _flag(r: LayerResult, comparison: Comparison) -> str:
    """``root`` for the first diverging layer, ``own`` for a layer whose own error breaks the thresholds."""
    if is_root(r, comparison):
        return "root"
    return "own" if r.own_breaks else ""


def chart(comparison: Comparison, kind: str) -> str:
    """An overview SVG of one metric along every compared layer that fits the page's width.

    Accumulated (solid), own error (dashed) and threshold lines; the first diverging layer as a red band and
    triangle, layers whose own error breaks as purple diamonds; a strip of status colours under the plot.
    """
    rows = _compared(comparison)
    if not rows:
        return ""
    f, ticks, lo, hi = _axis_values(kind)
    strip, labels = 7, 14
    height = _TOP + _PLOT_H + strip + labels + 4
    span = _VIEW_W - _LEFT - _RIGHT

    def x(i: int) -> float:
        return _LEFT + (i * span / (len(rows) - 1) if len(rows) > 1 else span / 2)

    def y(v: float) -> float:
        t = min(max((f(v) - lo) / (hi - lo), 0.0), 1.0)
        # cos: perfect (distance 1e-6) at the top; rmse: perfect (1e-5) at the bottom
        return _TOP + (t * _PLOT_H if kind == "cos" else (1 - t) * _PLOT_H)

    title = "COS" if kind == "cos" else "relative RMSE"
    out = [f'<svg class="ov" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_VIEW_W} {height}" role="img" '
           f'aria-label="{kind} per layer" style="font-family:system-ui,sans-serif;font-size:11px">',
           f'<title>{title} along the graph ({len(rows)} layers; click to zoom)</title>']
    for pos, label in ticks:
        t = (pos - lo) / (hi - lo)
        if 0 <= t <= 1:
            yy = _TOP + (t * _PLOT_H if kind == "cos" else (1 - t) * _PLOT_H)
            out.append(f'<line x1="{_LEFT}" x2="{_VIEW_W - _RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eceff3"/>'
                       f'<text x="{_LEFT - 6}" y="{yy + 4:.1f}" text-anchor="end" fill="#5b6573">{label}</text>')
    out.append(f'<text x="{_LEFT - 50}" y="{_TOP + _PLOT_H / 2:.0f}" fill="#1d2430" font-weight="600" '
               f'transform="rotate(-90 {_LEFT - 50} {_TOP + _PLOT_H / 2:.0f})" text-anchor="middle">{title}</text>')
    for i, r in enumerate(rows):
        if is_root(r, comparison):
            w = max(span / len(rows), 2.0)
            out.append(f'<rect x="{x(i) - w / 2:.1f}" y="{_TOP}" width="{w:.1f}" height="{_PLOT_H}" fill="{_ROOT}" '
                       f'fill-opacity="0.15"/><path d="M{x(i) - 5:.1f},{_TOP} h10 l-5,8 z" fill="{_ROOT}">'
                       f'<title>first diverging: {_e(r.layer.name)}</title></path>')
    out.append(_polyline([(x(i), y(getattr(r.thresholds, kind))) for i, r in enumerate(rows)], _THR, "5,4", 1.2))
    out.append(_polyline([(x(i), y(r.summary[kind])) for i, r in enumerate(rows)], _ACC, None, 1.6))
    own_pts = [(x(i), y(r.own[kind])) for i, r in enumerate(rows) if r.own is not None]
    if own_pts:
        out.append(_polyline(own_pts, _OWN, "4,3", 1.2))
    for i, r in enumerate(rows):
        if r.own_breaks and not is_root(r, comparison):
            cx, cy = x(i), y(r.own[kind])
            out.append(f'<path d="M{cx:.1f},{cy - 4:.1f} l4,4 l-4,4 l-4,-4 z" fill="{_CULPRIT}"><title>'
                       f'{_e(r.layer.name)}: own error breaks the thresholds</title></path>')
    # status strip: runs of equal status as one rectangle each
    base, start = _TOP + _PLOT_H + 2, 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i].status != rows[start].status:
            x0 = x(start) - span / len(rows) / 2 if len(rows) > 1 else _LEFT
            x1 = x(i - 1) + span / len(rows) / 2 if len(rows) > 1 else _VIEW_W - _RIGHT
            out.append(f'<rect x="{max(x0, _LEFT):.1f}" y="{base}" width="{min(x1, _VIEW_W - _RIGHT) - max(x0, _LEFT):.1f}"'
                       f' height="{strip}" fill="{_STATUS_COLOUR.get(rows[start].status, "#90a4ae")}"/>')
            start = i
    every = max(1, round(len(rows) / 10))
    for i in range(0, len(rows), every):
        out.append(f'<text x="{x(i):.1f}" y="{base + strip + labels - 2}" text-anchor="middle" fill="#5b6573">'
                   f'{i + 1}</text>')
    out.append(f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_TOP + _PLOT_H}" stroke="#9aa3af"/></svg>')
    return "\n".join(out)


def _polyline(points: list[tuple[float, float]], color: str, dash: str | None = None, width: float = 1.5) -> str:
    pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="{width}"{d}/>'


def _num(v: float | None) -> object:
    """A metric for the embedded data: 5 significant digits keep a 1,000-layer page small."""
    return None if v is None or not math.isfinite(v) else float(f"{v:.5g}")


def _data(comparison: Comparison) -> str:
    """The compared layers as compact JSON for the detail chart (``</`` escaped for the script element)."""
    rows = [[r.layer.name, r.layer.op_type, _num(r.summary["cos"]), _num(r.summary["rmse"]),
             _num(r.own["cos"] if r.own else None), _num(r.own["rmse"] if r.own else None), r.status,
             r.thresholds.cos, r.thresholds.rmse, _flag(r, comparison)] for r in _compared(comparison)]
    return json.dumps(rows, separators=(",", ":")).replace("</", "<\\/")


def _note(r: LayerResult, comparison: Comparison) -> str:
    first = comparison.first_diverging
    if is_root(r, comparison):
        return "first diverging (root cause)"
    if r.inherited_from:
        return f"inherits from known-bad {r.inherited_from}"
    if r.status not in (FAILED, XFAILED):
        return ""
    if r.own_breaks:
        return "own error breaks the thresholds"
    return f"inherits from {first.layer.name}" if first is not None and r.own is not None else ""


def _cell(v: float | None) -> str:
    return f'<td data-v="{"" if v is None else v}">{fmt_num(v)}</td>'


def _row(i: int, r: LayerResult, comparison: Comparison) -> str:
    s, own = r.summary, r.own
    flag = _flag(r, comparison)
    cls = f"row-{r.status}" + (" root" if flag == "root" else "")
    title = f' title="{_e(r.reason)}"' if r.reason else ""
    return (f'<tr class="{cls}" data-status="{r.status}" data-own="{int(r.own_breaks)}"{title}>'
            f'<td data-v="{i}">{i + 1}</td><td class="l">{_e(r.layer.name)}</td><td class="l">{_e(r.layer.op_type)}</td>'
            + _cell(s["cos"]) + _cell(s["rmse"]) + _cell(own["cos"] if own else None)
            + _cell(own["rmse"] if own else None) + _cell(s.worst["cos"])
            + f'<td>{fmt_num(r.thresholds.cos, 3)} / {fmt_num(r.thresholds.rmse, 3)}</td>'
            f'<td class="l"><span class="badge {r.status}">{_e(r.status)}</span></td>'
            f'<td class="l">{_e(_note(r, comparison))}</td></tr>')


def _table(comparison: Comparison, interactive: bool) -> str:
    """Every compared layer (sortable, filterable with scripts), then the layers not compared, with reasons."""
    rows = _compared(comparison)
    cols = [("#", ""), ("layer", "l"), ("op", "l"), ("cos", ""), ("rmse", ""), ("own cos", ""), ("own rmse", ""),
            ("worst cos", ""), ("thresholds", ""), ("status", "l"), ("note", "l")]
    head = "".join(f'<th class="{c} s">{_e(n)}</th>' for n, c in cols)
    body = "".join(_row(i, r, comparison) for i, r in enumerate(rows))
    tools = ('<div class="tools"><label><input type="checkbox" class="f-failed"> failed only</label>'
             '<label><input type="checkbox" class="f-own"> own error breaks</label>'
             '<label>layer <input type="search" class="f-name" size="18"></label>'
             '<span class="meta f-count"></span> <span class="meta">(click a column to sort)</span></div>'
             ) if interactive else ""
    cls = "qa-layers" if interactive else "layers"  # the scripts' table: the float-vs-fixed one
    out = f'{tools}<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody>' \
          f'</table></div>'
    skipped = [r for r in comparison.layers if r.status == SKIPPED or r.summary is None]
    if skipped:
        items = "".join(f"<li>{_e(r.layer.name)} ({_e(r.layer.op_type)}): {_e(r.reason or 'not compared')}</li>"
                        for r in skipped)
        out += f'<details class="meta"><summary>{len(skipped)} layers not compared</summary><ul>{items}</ul></details>'
    return out


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
            f'<td class="l"><span class="badge {PASSED if a.passes else FAILED}">'
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
    notes = ((["harmful"] if a.harmful else []) + (["slower than float"] if c.get("slower_than_float") else [])
             + ([f"task accuracy {a.accuracy:.4g}"] if a.accuracy is not None else []))
    lat = (f"{c['latency_ms']:.3g} ({c['latency_int8_ms']:.3g} / {c['latency_float_ms']:.3g})"
           if "latency_ms" in c else "-")
    share = f"{100 * c['shares']['macs_8']:.1f}%" if "shares" in c else "-"
    return f'<td>{lat}</td><td>{share}</td><td class="l">{_e(", ".join(notes))}</td>'


def _sensitivity(d) -> str:
    """The most sensitive sites as horizontal bars (score relative to the largest) and the search's curve."""
    rows = list(d.sensitivity[:12])
    if not rows:
        return ""
    top = math.log1p(max(max(r["score"] for r in rows), 1e-12))  # bars on a log scale: one destroyed site
    # (score 100: its slice lost every level) would flatten the others
    bars = "".join(
        f'<tr><td class="l">{_e(r["site"])}</td><td class="l">{_e(r["kind"])}</td><td class="l">{_e(r["node"])}</td>'
        f'<td>{fmt_num(r["score"])}</td><td class="l"><div style="background:#c0392b;height:0.8em;'
        f'width:{math.log1p(max(0.0, r["score"])) / top * 200:.0f}px"></div></td></tr>' for r in rows)
    out = [f'<h3>Sensitivity ({_e(rows[0]["metric"])}, quantized alone; most sensitive first; bars: log scale)</h3>'
           '<table><tr><th class="l">site</th><th class="l">kind</th><th class="l">node</th><th>score</th>'
           f'<th class="l"></th></tr>{bars}</table>']
    curve = (d.search or {}).get("curve", ())
    if curve:
        out.append(_curve_svg(curve))
        body = "".join(f'<tr class="{"" if c["passes"] else "row-failed"}"><td>{c["k"]}</td><td class="l">'
                       f'{_e(c["level"])}</td><td>{fmt_num(c["margin"])}</td><td class="l">'
                       f'{_e(c["first_diverging_layer"] or "-")}</td><td>{fmt_num(c["outputs_cos"])}</td></tr>'
                       for c in curve)
        out.append('<h3>Sets judged (k sites raised)</h3><table><tr><th>k</th><th class="l">level</th>'
                   f'<th>gate margin</th><th class="l">first diverging</th><th>outputs cos</th></tr>{body}</table>')
    return "".join(out)


def _curve_svg(curve: list[dict]) -> str:
    """The search's curve as a chart: k sites raised (x) against the worst gate margin (y, clipped to [-1, 1];
    above 0 every gate passes), one dot per set judged, green passing, red failing."""
    w, h, left, top = 480, 160, 40, 10
    kmax = max(max(c["k"] for c in curve), 1)

    def x(k: int) -> float:  # log scale: sets of 3 and of 300 sites both stay readable
        return left + math.log1p(k) / math.log1p(kmax) * w

    def y(m: float) -> float:
        return top + (1.0 - max(-1.0, min(1.0, m))) / 2.0 * h

    dots = "".join(
        f'<circle cx="{x(c["k"]):.1f}" cy="{y(c["margin"]):.1f}" r="3" '
        f'fill="{"#2e7d32" if c["passes"] else "#c0392b"}"><title>k={c["k"]} ({_e(c["level"])}): margin '
        f'{fmt_num(c["margin"])}, first diverging {_e(c["first_diverging_layer"] or "-")}</title></circle>'
        for c in curve)
    return (f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {left + w + 10} {top + h + 30}" '
            f'width="{left + w + 10}" role="img" aria-label="gate margin against sites raised" '
            f'style="font-size:11px">'
            f'<line x1="{left}" x2="{left + w}" y1="{y(0.0):.1f}" y2="{y(0.0):.1f}" stroke="#9aa3af" '
            f'stroke-dasharray="4 3"/>'
            f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + h}" stroke="#9aa3af"/>'
            f'<text x="{left - 4}" y="{y(1.0) + 4:.1f}" text-anchor="end">1</text>'
            f'<text x="{left - 4}" y="{y(0.0) + 4:.1f}" text-anchor="end">0</text>'
            f'<text x="{left - 4}" y="{y(-1.0) + 4:.1f}" text-anchor="end">-1</text>'
            + "".join(f'<text x="{x(k):.1f}" y="{top + h + 14}" text-anchor="middle">{k}</text>'
                      for k in (0, 1, 10, 100, 1000, 10000) if k < kmax)
            + f'<text x="{left + w}" y="{top + h + 14}" text-anchor="end">{kmax}</text>'
            f'<text x="{left + w / 2:.0f}" y="{top + h + 26}" text-anchor="middle">sites raised (k, log scale); '
            f'y: worst gate margin</text>{dots}</svg>')


def _agreement(result: ModelResult) -> str:
    """Fixed vs offline: the headline and every tensor compared, in graph order."""
    a = result.agreement
    if a is None or a.worst is None:
        return ""
    w, first = a.worst, a.first_failing
    status = PASSED if a.passed else FAILED
    keys = list(a.tensors[0].histogram)
    rows = "".join(
        f'<tr class="row-{PASSED if t.mismatch_rate <= a.max_mismatch_rate else FAILED}">'
        f'<td class="l">{_e(t.tensor)}</td><td>{t.max_steps}</td><td>{100 * t.mismatch_rate:.2f}%</td>'
        + "".join(f"<td>{t.histogram[k]}</td>" for k in keys) + "</tr>" for t in a.tensors)
    head = "".join(f"<th>{_e(k)} steps</th>" for k in keys)
    return (f'<h3>{_e(a.reference)} vs {_e(a.target)} <span class="badge {status}">{status}</span></h3>'
            f'<div class="meta">worst '
            f"{_e(w.tensor)}: {100 * w.mismatch_rate:.2f}% of elements beyond {a.tolerance_steps} steps (gate "
            f"{100 * a.max_mismatch_rate:.2f}%), max {w.max_steps}"
            + (f"; first beyond the gate in graph order: {_e(first.tensor)}" if first is not None else "")
            + f'</div><details{" open" if not a.passed else ""}><summary>{len(a.tensors)} tensors</summary>'
            f'<div class="scroll"><table><thead><tr><th class="l">tensor</th><th>max steps</th>'
            f"<th>&gt; {a.tolerance_steps} steps</th>{head}</tr></thead><tbody>{rows}</tbody></table></div></details>")


def _counts(result: ModelResult) -> dict[str, int]:
    counts: dict[str, int] = {}
    for c in result.comparisons:
        for r in c.layers:
            counts[r.status] = counts.get(r.status, 0) + 1
    return counts


def model_section(result: ModelResult, verdict: Status | None = None, index: int = 0,
                  interactive: bool = True) -> str:
    """One model's part of the report; ``verdict`` includes the CI gates. ``interactive``: with the detail
    chart and table tools (scripts), off for pytest-html."""
    s = result.spec
    status = verdict or result.status
    xfailed = _counts(result).get(XFAILED, 0)
    out = [f'<section class="qa-model" id="model-{index}"><h2>{_e(s.name)} <span class="badge {status}">'
           f'{_e(status)}</span>' + (f' <span class="badge xfailed">{xfailed} xfailed</span>' if xfailed else "")
           + "</h2>",
           f'<div class="meta">{_e(s.spec_path)} &middot; {result.quantized_layers} quantized tensors &middot; '
           f'{result.samples} samples &middot; {_e(s.quantization.activations)} activations, '
           f'{_e(s.quantization.weights)} weights, {_e(s.quantization.method)}'
           f'{", per-channel" if s.quantization.per_channel else ""}</div>']
    if result.error is not None:
        out.append(f"<pre>{_e(result.error.message)}</pre></section>")
        return "\n".join(out)
    if result.artifacts is not None:
        out.append(f'<div class="meta">open in Netron: <code>netron {_e(result.artifacts.fixed_model)}</code></div>')
    for c in result.comparisons:
        first = c.first_diverging
        out.append(f"<h3>{_e(c.reference)} vs {_e(c.target)}: first diverging layer: "
                   f"{_e(first.layer.name if first else 'none')}</h3>")
        if c.target == "fixed":
            out.append(f'<div class="legend"><span style="color:{_ACC}">&mdash; accumulated</span> &nbsp; '
                       f'<span style="color:{_OWN}">- - own error (layer fed with float inputs)</span> &nbsp; '
                       f'<span style="color:{_THR}">- - threshold</span> &nbsp; <span style="color:{_ROOT}">'
                       f'&#9660; first diverging (root cause)</span> &nbsp; <span style="color:{_CULPRIT}">&#9670; '
                       f'own error breaks</span> &nbsp; strip: failed / xfailed / passed'
                       + (" &nbsp; (click to zoom)" if interactive else "") + "</div>")
            out.append(chart(c, "cos") + chart(c, "rmse"))
            rows = _compared(c)
            if interactive and rows:
                win = min(_DETAIL, len(rows))
                out.append(f'<script type="application/json" class="qa-data">{_data(c)}</script>'
                           f'<input type="range" class="zoom" min="0" max="{len(rows) - win}" value="0" '
                           f'data-win="{win}" aria-label="detail window"><div class="detail"></div>')
            out.append(_diagnosis(c))
        out.append(_table(c, interactive and c.target == "fixed"))
    out.append(_agreement(result))
    out.append("</section>")
    return "\n".join(out)


def _models_table(results: list[ModelResult], verdicts: list[Status], order: list[int]) -> str:
    rows = []
    for i in order:
        r, v = results[i], verdicts[i]
        counts = _counts(r)
        fx = r.comparison("float", "fixed")
        first = fx.first_diverging.layer.name if fx is not None and fx.first_diverging else "-"
        diag = f"{fx.diagnosis.kind} at {fx.diagnosis.layer}" if fx is not None and fx.diagnosis else "-"
        agree = "-" if r.agreement is None or r.agreement.worst is None else \
            (PASSED if r.agreement.passed else FAILED)
        rows.append(f'<tr class="row-{v}"><td class="l"><a href="#model-{i}">{_e(r.spec.name)}</a></td>'
                    f'<td class="l">{_e(r.spec.spec_path.name)}</td><td class="l"><span class="badge {v}">{v}</span>'
                    f'</td>' + "".join(f"<td>{counts.get(k, 0)}</td>" for k in (FAILED, XFAILED, XPASSED, PASSED,
                                                                                SKIPPED))
                    + f'<td class="l">{_e(first)}</td><td class="l">{_e(diag)}</td><td class="l">{agree}</td></tr>')
    return ('<table class="qa-models"><thead><tr><th class="l">model</th><th class="l">spec</th><th class="l">status'
            '</th><th>failed</th><th>xfailed</th><th>xpassed</th><th>passed</th><th>skipped</th><th class="l">first '
            'diverging</th><th class="l">diagnosis</th><th class="l">agreement (steps)</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


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
    """One model's section with its own scoped style, without scripts: what a pytest-html extra shows."""
    return (f'<div class="quantacc" style="max-width:1400px"><style>{_scoped_css(".quantacc")}</style>'
            f"{model_section(result, verdict, interactive=False)}</div>")


def one_row(r: LayerResult, comparison: Comparison) -> str:
    """The one-row extra of a failing layer that is not its model's root cause (pytest-html)."""
    s, own = r.summary, r.own
    cells = [r.layer.name, r.layer.op_type, f"cos {fmt_num(s['cos'])}", f"rmse {fmt_num(s['rmse'])}",
             f"own cos {fmt_num(own['cos'] if own else None)}", f"own rmse {fmt_num(own['rmse'] if own else None)}",
             r.status, _note(r, comparison)]
    return ('<table class="quantacc-row" style="font-size:13px;border-collapse:collapse"><tr>'
            + "".join(f'<td style="padding:2px 8px">{_e(c)}</td>' for c in cells if c) + "</tr></table>")


def page(results: list[ModelResult], title: str = "pytest-quantacc report",
         verdicts: list[Status] | None = None) -> str:
    """The whole report; ``verdicts`` (one per result, including the CI gates) default to the results' own.

    ``results`` come in the terminal summary's order; failing models are listed (and shown) first.
    """
    verdicts = verdicts or [r.status for r in results]
    order = sorted(range(len(results)), key=lambda i: verdicts[i] == PASSED)
    failed = sum(v != PASSED for v in verdicts)
    body = "\n".join(model_section(results[i], verdicts[i], i) for i in order)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
            f'<h1>{_e(title)}</h1><div class="meta">{len(results)} models, {failed} failing</div>\n'
            f"{_models_table(results, verdicts, order)}\n{body}\n<script>{_JS}</script></body></html>\n")

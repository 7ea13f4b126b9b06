"""The --quantacc-html page in a real browser (headless Chromium; skipped where it is not installed).

The page's detail chart, filters and sorting are inline JavaScript, which no Python test runs; a script error
would leave a page that still "contains" its markup. So the page is loaded in Chromium, which dumps the DOM
after the scripts ran: the detail charts drawn and the filter counts written prove that the whole script ran
for every model; a probe script appended to a copy of the page then ticks "failed only" and reports how many
rows stay visible, checked against the JSON report of the same run.

Two specs: the healthy example (first in the terminal's order) and the outlier example without its
``known_bad`` entry (failing); the page must list the failing model first.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from conftest import EXAMPLE

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

PROBE = """<script>
var sec = document.querySelectorAll('.qa-model')[0], box = sec.querySelector('input.f-failed');
box.checked = true; box.dispatchEvent(new Event('input'));
var visible = Array.prototype.filter.call(sec.querySelectorAll('table.qa-layers tbody tr'),
  function (tr) { return tr.style.display != 'none'; }).length;
sec.querySelector('table.qa-layers th.s:nth-child(7)').click();  /* sort by own rmse, ascending */
var own = Array.prototype.map.call(sec.querySelectorAll('table.qa-layers tbody tr td:nth-child(7)'),
  function (td) { return td.dataset.v; }).filter(function (v) { return v !== ''; }).map(Number);
document.title = 'probe ' + visible + ' ' + own.every(function (v, i) { return i == 0 || own[i - 1] <= v; });
</script></body>"""


def dom(path) -> str:
    """The page's DOM after its scripts ran."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True).stdout


def test_report_renders_and_its_scripts_work_in_chromium(pytester):
    for sub in ("models", "data"):
        shutil.copytree(EXAMPLE / sub, pytester.path / sub)
    shutil.copy(EXAMPLE / "quantacc.yaml", pytester.path / "quantacc.yaml")
    text = (EXAMPLE / "quantacc_outlier.yaml").read_text()
    (pytester.path / "spec.yaml").write_text(text[:text.index("    known_bad:")])
    pytester.runpytest("--quantacc", "quantacc.yaml", "spec.yaml", "--quantacc-workdir", str(pytester.path / "w"),
                       "-p", "no:randomly", "--quantacc-remedies", "0", "--quantacc-html", "r.html",
                       "--quantacc-report", "r.json", "--tb=no")
    page = pytester.path / "r.html"
    models = json.loads((pytester.path / "r.json").read_text())["models"]
    assert [m["name"] for m in models] == ["digits_cnn", "digits_outlier"]  # the terminal's order

    after = dom(page)
    first_row = after.split('<table class="qa-models">', 1)[1].split("</tr>", 2)[1]
    assert "digits_outlier" in first_row and "failed" in first_row  # failing model first
    assert after.count('<div class="detail"><svg') == 2 and len(re.findall(r">\d+ of \d+ layers shown<", after)) == 2

    fixed = next(c for c in models[1]["comparisons"] if c["target"] == "fixed")
    broken = sum(r["status"] in ("failed", "xfailed") for r in fixed["layers"] if r["status"] != "skipped")
    probe = pytester.path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE))
    title = dom(probe).split("<title>", 1)[1].split("</title>", 1)[0]
    assert title == f"probe {broken} true"

    shot = pytester.path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,1800", f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.stat().st_size > 10_000

"""Every report page in a real headless browser (Debian's chromium): no horizontal overflow, no chart
labels on top of each other, and a print layout that keeps headings with what follows.

The pages are the real renderers' output: an identify report and a probe report (a real probe over
loopback HTTP) of the issued digits workspace, and an evaluation page of a recorded-shape evaluation
(running the whole attack suite would take minutes; its page is rendered by the same code).

A small script is appended to a copy of each page (the page itself carries none, and its
Content-Security-Policy would forbid one: the copy's policy is relaxed for the check only). It measures
the layout at a phone width, a laptop width and the print width, and writes its findings into the DOM,
which ``chromium --dump-dom`` hands back. Skipped, with the reason, only where no chromium is installed.
"""

from __future__ import annotations

import copy as copylib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests._constants import HANG_S
from tracer.evaluate import AttackResult, Evaluation, FalseAccusationResult, IndependentModel, SuiteResult

from .fixtures_issued import PASSPHRASE, issued_digits

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"),
                             "/usr/bin/chromium") if p and os.path.exists(p)), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install -y chromium)")


def sample_evaluation() -> Evaluation:
    """An evaluation shaped like the recorded runs: huge and small p-values, every verdict, correlated models."""
    def attack(name, group, log10_p, drop, verdict, named=("globex",), matches=120, **kw):
        return AttackResult(name, group, f"{name} of the copy", params=kw.get("params", {"fraction": 0.5}),
                            clean_accuracy=0.97 - drop, accuracy_drop=drop, valid=drop <= 0.05, matches=matches, trials=128,
                            agreement=matches / 128, p_value=10 ** log10_p, log10_p=log10_p, right=["globex"], named=list(named),
                            named_right=int("globex" in named), verdict=verdict)
    ref = attack("none", "reference", -129.9, 0.0, "survives", matches=128)
    attacks = [attack("finetune-all-hot", "fine-tuning", -48.2, 0.004, "survives", matches=70),
               attack("prune-50", "pruning", -129.9, 0.002, "survives", matches=128),
               attack("distill-same", "distillation", -0.9, 0.03, "erased", named=(), matches=16),
               attack("prune-70", "pruning", -20.1, 0.12, "not a valid attack", matches=50),
               AttackResult("distill-alt-with-a-rather-long-attack-name", "distillation", "student of another architecture",
                            verdict="skipped", note="the workspace's module has no make_model_alt")]
    suite = SuiteResult("globex", "Globex Corporation", "models/issued/globex.onnx", "ab" * 32, 0.97, 0.972, 1e-6, 3,
                        "a held-out third of the training inputs", 400, 360, 0.05, ref, attacks, 12.0)
    models = [IndependentModel(f"independent-{i}", "model.factory" if i % 2 else "make_model_alt", "vendor", i, 0.95,
                               "globex" if i != 4 else "acme", 22, 128, 0.02, -1.7, []) for i in range(1, 10)]
    return Evaluation(suite, FalseAccusationResult(models, 1e-6, 3, 30.0), ledger_entry=42)


@pytest.fixture(scope="module")
def pages(issued_digits, tmp_path_factory):
    """identify.html, probe.html and evaluate.html, written by the real renderers."""
    from tests.servers import ModelServer
    from tracer.evaluate.html import write_html
    from tracer.identify import identify_model
    from tracer.probing import ClientOptions, ProbeOptions, make_format, probe_endpoint
    from tracer.report import write_report
    from tracer.workspace import Workspace

    out = tmp_path_factory.mktemp("pages")
    ws = Workspace(shutil.copytree(issued_digits, out / "ws"))
    keyring = ws.unlock(passphrase=PASSPHRASE)
    write_report(ws, keyring, identify_model(ws, keyring, ws.root / "models" / "issued" / "acme.onnx"), out / "identify.html")
    with ws.ledger() as ledger:  # one more customer whose copy lacks ps1: listed as not tested
        payload = copylib.deepcopy(ledger.issuances("acme")[0].payload)
        payload.update(customer_id="hooli", display_name="Hooli XYZ", new_customer=True,
                       probe_sets=[ps for ps in payload["probe_sets"] if ps["id"] == "ps2"])
        ledger.append("issuance", payload, key=keyring.signing_key)
    saved = {k: os.environ.pop(k) for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")
             if k in os.environ}
    try:
        with ModelServer(ws.root / "models" / "issued" / "globex.onnx", ws.config.task, "kserve-v1", label_only=True) as srv:
            result = probe_endpoint(ws, keyring, srv.url, make_format("kserve-v1", ws.config.task),
                                    ProbeOptions(client=ClientOptions(concurrency=1)))
    finally:
        os.environ.update(saved)
    write_report(ws, keyring, result, out / "probe.html")
    write_html(sample_evaluation(), out / "evaluate.html")
    return {name: out / f"{name}.html" for name in ("identify", "probe", "evaluate")}


# The check, run in the page: overflow at the current width, and overlapping text boxes inside each chart.
_PROBE = r"""
<script>
(function () {
  function boxes(svg) {
    var out = [], m = svg.getScreenCTM();
    svg.querySelectorAll('text').forEach(function (t) {
      var r = t.getBoundingClientRect();
      if (r.width > 0 && t.textContent.trim()) out.push({t: t.textContent, l: r.left, r: r.right, top: r.top, b: r.bottom});
    });
    return out;
  }
  var overlaps = [];
  document.querySelectorAll('svg').forEach(function (svg, k) {
    var b = boxes(svg);
    for (var i = 0; i < b.length; i++) for (var j = i + 1; j < b.length; j++) {
      var x = Math.min(b[i].r, b[j].r) - Math.max(b[i].l, b[j].l), y = Math.min(b[i].b, b[j].b) - Math.max(b[i].top, b[j].top);
      if (x > 1 && y > 1) overlaps.push('chart ' + k + ': "' + b[i].t + '" / "' + b[j].t + '"');
    }
  });
  var wide = [];
  document.querySelectorAll('main *').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.right > document.documentElement.clientWidth + 1 && !el.closest('.scroll')) wide.push(el.tagName + ': ' + (el.textContent || '').slice(0, 40));
  });
  var broken = [];  // numbers, p-values and names in tables are never split across lines
  document.querySelectorAll('.n, table.grid td code').forEach(function (el) {
    if (el.getClientRects().length > 1) broken.push(el.textContent);
  });
  var res = {broken: broken, scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
             overlaps: overlaps, wide: wide.slice(0, 10)};
  var pre = document.createElement('pre'); pre.id = 'layout-check'; pre.textContent = JSON.stringify(res);
  document.body.appendChild(pre);
})();
</script>
"""


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True,
                          timeout=HANG_S)  # a hang limit only: chromium's CPU time is spent in its child processes


def _checked_copy(page: Path, tmp: Path) -> Path:
    html = page.read_text(encoding="utf-8")
    html = re.sub(r"default-src 'none'", "default-src 'none'; script-src 'unsafe-inline'", html, count=1)
    copy = tmp / f"{page.stem}.check.html"
    copy.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    return copy


def _layout(page: Path, tmp: Path, width: int) -> dict:
    r = _chromium(f"--window-size={width},900", "--virtual-time-budget=3000", "--dump-dom", _checked_copy(page, tmp).as_uri(), tmp=tmp)
    m = re.search(r'<pre id="layout-check">(.*?)</pre>', r.stdout, re.DOTALL)
    assert m, f"chromium did not run the check: {r.stderr[-800:]}"
    import html as htmllib

    return json.loads(htmllib.unescape(m.group(1)))


@needs_browser
@pytest.mark.parametrize("name", ["identify", "probe", "evaluate"])
@pytest.mark.parametrize("width", [390, 1280])
def test_page_fits_the_width_and_chart_labels_do_not_overlap(pages, name, width, tmp_path):
    res = _layout(pages[name], tmp_path, width)
    assert res["scrollWidth"] <= res["clientWidth"], f"{name} overflows at {width}px: {res['wide']}"
    assert not res["wide"], res["wide"]
    assert not res["overlaps"], res["overlaps"]
    assert not res["broken"], f"split across lines: {res['broken']}"


@needs_browser
@pytest.mark.parametrize("name", ["identify", "probe", "evaluate"])
def test_print_layout_keeps_headings_with_their_content(pages, name, tmp_path):
    """Printed to PDF, no page ends with a heading (checked on the PDF's text, page by page)."""
    pdf = tmp_path / f"{name}.pdf"
    r = _chromium("--no-pdf-header-footer", f"--print-to-pdf={pdf}", pages[name].as_uri(), tmp=tmp_path)
    assert pdf.is_file() and pdf.stat().st_size > 1000, r.stderr[-800:]
    pdftotext = shutil.which("pdftotext")
    if pdftotext is None:
        pytest.skip("pdftotext (poppler-utils) is not installed: the PDF was made, its pages were not read")
    text = subprocess.run([pdftotext, "-layout", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    headings = set(re.findall(r"<h[23][^>]*>(.*?)</h[23]>", pages[name].read_text(encoding="utf-8")))
    headings = {re.sub(r"<[^>]+>", "", h).strip() for h in headings}
    for i, sheet in enumerate(text.split("\f")[:-1]):
        lines = [ln.strip() for ln in sheet.splitlines() if ln.strip()]
        assert lines and lines[-1] not in headings, f"{name}: page {i + 1} ends with the heading {lines[-1]!r}"

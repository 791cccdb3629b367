"""Report content (escaping, seed-compatible JSON) and the real report in headless Chromium."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codi_fixtures.analyses import StudyAnalysis
from codi_fixtures.config import BUNDLED_CHECKPOINT
from codi_fixtures.model.architecture import LayerRoles
from codi_fixtures.report.summary import (
    ClaimRow,
    summary_html,
    summary_statistics,
    write_summary_statistics,
)
from codi_fixtures.testing import synthetic_study

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]


@pytest.fixture(scope="module")
def synthetic() -> StudyAnalysis:
    return StudyAnalysis(synthetic_study(40, seed=3), LayerRoles(4, 8, 14), n_boot=200, n_perm=1000)


def test_planted_effects_are_recovered_by_the_analysis(synthetic):
    assert synthetic.last_most_important("mean").verdict == "supported"
    assert synthetic.rq1_logp("mean")[5].verdict == "supported"
    beyond = synthetic.rq2("beyond_position")
    assert beyond[8].verdict == "supported" and beyond[8].statistic > 0.3
    assert beyond[4].verdict != "supported"
    assert synthetic.rq2("pooled")[8].verdict == "descriptive"


def test_summary_statistics_keep_the_seed_keys(synthetic):
    content = summary_statistics(synthetic, {"tier": "quick"})
    for layer in (4, 8, 14):
        entry = content["overall_correlation"][f"layer_{layer}"]
        assert {"r", "p", "pooled", "position", "beyond_position", "spearman_rho"} <= set(entry)
    for t in range(6):
        token = content["per_token"][f"token_{t}"]
        assert {
            "importance_mean",
            "importance_std",
            "attention_mean",
            "attention_std",
            "correlation",
            "p",
        } <= set(token)
    assert set(content["rq1"]) == {"zero", "mean"}
    json.dumps(content, allow_nan=False, default=float)  # serialisable once NaN is nulled


def test_summary_json_tells_an_unbounded_ci_end_from_a_missing_number(tmp_path):
    """NaN (not computed) is null; an infinite CI end (no bound at this n) is "inf" / "-inf"."""
    path = tmp_path / "summary_statistics.json"
    ci = {"ci_low": -math.inf, "ci_high": math.inf, "statistic": np.float64(0.25), "p": math.nan}
    write_summary_statistics(path, {"rq1": {"zero": [ci]}})
    strict = {"parse_constant": lambda name: pytest.fail(f"non-standard JSON literal {name}")}
    data = json.loads(path.read_text(), **strict)  # strict JSON for any reader
    assert data["rq1"]["zero"] == [
        {"ci_low": "-inf", "ci_high": "inf", "statistic": 0.25, "p": None}
    ]
    assert float(data["rq1"]["zero"][0]["ci_low"]) == -math.inf
    assert "null" in data["number_encoding"] and '"inf"' in data["number_encoding"]


def test_problem_text_and_messages_are_escaped(synthetic):
    hostile = "<script>alert('x')</script> & <b>bold</b>"
    row = ClaimRow("t.py::test[quick]", "failed", "quick", hostile, hostile, {})
    questions = {synthetic.results.problem_ids[0]: hostile}
    page = summary_html([row], {"quick": (synthetic, {}, questions)}, {"note": hostile})
    assert "<script>alert(" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;b&gt;" in page


def test_a_lone_inconclusive_claim_without_a_statistic_says_why():
    from codi_fixtures.report.findings import answers_html

    why = "inconclusive: no step's value is decodable by the logit lens"  # as claim_rows
    row = ClaimRow("test_rq3_x.py::test_link[quick]", "inconclusive", "quick", "link", why, {})
    page = answers_html([row])
    assert "no step&#x27;s value is decodable by the logit lens." in page
    assert "n/a" not in page and "Skipped" not in page


def test_a_bonferroni_level_ci_is_shown_as_it_is_not_rounded_to_100():
    from codi_fixtures.report.findings import answers_html

    stats = {"statistic": -0.571, "ci_low": -0.906, "ci_high": 0.322, "ci_level": 0.99762}
    row = ClaimRow("test_rq3_x.py::test_lens[quick-s3]", "inconclusive", "quick", "lens", "", stats)
    page = answers_html([row])
    assert "99.8% CI [" in page and "100% CI" not in page


CHECK_SCRIPT = """
<script>
window.addEventListener('load', () => setTimeout(() => {
  const imgs = [...document.images].filter(i => i.getAttribute('src'));  // real pictures
  const top = document.getElementById('codi-summary');
  const width = window.innerWidth;
  const overflowing = top ? [...top.querySelectorAll('*')].filter(
    e => e.getBoundingClientRect().right > width + 1).map(e => e.tagName + '.' + e.className) : [];
  const links = top ? [...top.querySelectorAll('.codi-grid a')] : [];
  const thumbs = top ? [...top.querySelectorAll('.codi-thumbs a')] : [];
  const check = {
    images: imgs.length,
    broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
    verdicts: !!document.getElementById('codi-verdicts'),
    first: document.body.firstElementChild ? document.body.firstElementChild.id : '',
    findings: top ? top.querySelectorAll('.codi-answers li').length : 0,
    grids: top ? top.querySelectorAll('.codi-grid').length : 0,
    links: links.length,
    dangling: links.filter(a => !document.getElementById(a.getAttribute('href').slice(1))).length,
    thumbs: thumbs.length,
    thumbs_broken: thumbs.filter(a => !a.querySelector('img').naturalWidth).length,
    overflow: overflowing.slice(0, 5),
    network: performance.getEntriesByType('resource').filter(
      r => /^(https?|wss?):/.test(r.name)).map(r => r.name),
    results: document.querySelectorAll('#results-table tbody.results-table-row').length,
  };
  const report = () => {
    const out = document.createElement('pre');
    out.textContent = 'CODICHECK' + JSON.stringify(check) + 'END';
    document.body.appendChild(out);
  };
  if (!thumbs.length) { report(); return; }
  const target = document.getElementById(thumbs[0].getAttribute('href').slice(1));
  const before = target.querySelector('img').width;
  thumbs[0].click();  // a thumbnail opens its figure full size (CSS :target)
  setTimeout(() => {
    const img = target.querySelector('img');
    check.zoom = {
      position: getComputedStyle(target).position,
      shown: img.width,
      natural: img.naturalWidth,
      before: before,
    };
    report();
  }, 300);
}, 1000));
</script>
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not (BUNDLED_CHECKPOINT / "model.safetensors").exists(), reason="bundled model not built"
)
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: chromium)")
def test_quick_study_report_renders_in_headless_chromium(tmp_path):
    """The README's main job on the bundled model; its report checked in a real browser."""
    report_dir = tmp_path / "reports"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "experiments",
            "-m",
            "quick",
            "-p",
            "no:cacheprovider",
            "--report-dir",
            str(report_dir),
            "--codi-cache",
            str(tmp_path / "cache"),
            "-q",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads((report_dir / "summary_statistics.json").read_text())
    assert summary["n_problems"] == 10 and summary["verdicts"]
    page = tmp_path / "checked.html"
    page.write_text((report_dir / "report.html").read_text() + CHECK_SCRIPT)
    n_claims = len(summary["verdicts"])
    for width in (1400, 800):
        dom = subprocess.run(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / f'chrome{width}'}",
                f"--window-size={width},2000",
                "--dump-dom",
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        found = re.search(r"CODICHECK(\{.*?\})END", dom.replace("&quot;", '"'))
        assert found, "the check script did not run"
        check = json.loads(found.group(1))
        assert check["first"] == "codi-summary"  # the findings open the page
        assert check["findings"] >= 4 and check["grids"] >= 4  # RQ1 and RQ2 answered, gridded
        assert check["links"] == n_claims and check["dangling"] == 0  # every cell -> its row
        assert check["verdicts"] and check["results"] == n_claims
        assert check["broken"] == 0 and check["images"] >= 5  # summary figures decode
        assert check["overflow"] == [], f"overflows at {width} px: {check['overflow']}"
        assert check["network"] == []  # self-contained: no request leaves the page
        assert check["thumbs"] >= 5 and check["thumbs_broken"] == 0  # each question's figures
        zoom = check["zoom"]  # clicking a thumbnail shows its figure on top, as big as fits
        assert zoom["position"] == "fixed" and zoom["shown"] > zoom["before"]
        subprocess.run(
            [
                CHROMIUM,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / f'shot{width}'}",
                f"--window-size={width},2600",
                f"--screenshot={report_dir / f'screenshot-{width}.png'}",
                (report_dir / "report.html").as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )


def test_findings_show_an_unbounded_ci_end_as_infinite_not_missing():
    """A CI end no sample of that size can give is ±∞; only a missing one is n/a."""
    from codi_fixtures.report.findings import _num

    assert (_num(math.inf), _num(-math.inf), _num(math.nan), _num(None)) == (
        "∞",
        "−∞",
        "n/a",
        "n/a",
    )
    assert _num(0.12345) == "0.123"

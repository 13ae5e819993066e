"""The HTML report opened in a real headless browser (Debian's chromium): it renders, shows the
verdict, draws the latency plots, asks for nothing over the network, and holds no secret."""

import os
import random
import re
import shutil
import subprocess
import tempfile
import uuid

from shadowtap.compare.aggregate import Comparison
from shadowtap.compare.report_html import write_html
from tests.support.prereq import require

CHROMIUM = "/usr/bin/chromium"


def chromium(args, url):
    require(os.path.exists(CHROMIUM) or shutil.which("chromium") is not None, "chromium")
    profile = tempfile.mkdtemp(prefix="stt-chromium-")
    try:
        p = subprocess.run(
            [
                CHROMIUM if os.path.exists(CHROMIUM) else "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                *args,
                url,
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    return p


def report(craft, fail: bool):
    rng = random.Random(5)
    c = Comparison()
    for i in range(300):
        body = {
            "user": f"u{i % 4}",
            "password": "hunter2",
            "score": rng.random(),
            "at": craft.iso(craft.T0 + i),
            "label": ["x", "y"][i % 2],
        }
        sbody = dict(body, at=craft.iso(craft.T0 + i + 1))
        if fail and i % 4 == 0:
            sbody["label"] = "<script>alert(1)</script>"
        p = craft.response(body, headers=(("Set-Cookie", "session=topsecret"),))
        s = craft.response(sbody, status=500 if fail and i % 9 == 0 else 200)
        lat = rng.lognormvariate(3, 0.4)
        ex = craft.exchange(
            i,
            p,
            target=f"/api/users/{uuid.uuid4()}?token=SECRETTOKEN",
            latency_ms=lat,
            req_headers=(("Authorization", "Bearer SECRETBEARER"),),
        )
        c.add(ex, craft.result(i, s, latency_ms=lat * (2 if fail else 1) + rng.random()))
    return c.snapshot()


def test_failing_report_renders_in_chromium(craft, tmp_path):
    path = tmp_path / "report.html"
    write_html(report(craft, fail=True), str(path))
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    html = path.read_text()
    # self-contained: nothing to fetch, no script at all (the injected one is escaped)
    assert not re.search(r"<(script|link|img|iframe)\b", html, re.IGNORECASE)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE)
    for secret in ("hunter2", "topsecret", "SECRETTOKEN", "SECRETBEARER"):
        assert secret not in html
    p = chromium(["--dump-dom"], path.as_uri())
    assert p.returncode == 0, p.stderr[-2000:]
    dom = p.stdout
    assert 'id="verdict"' in dom and "Verdict: FAIL" in dom
    assert dom.count("<polyline") >= 2 and 'class="latency"' in dom
    assert "samples of <code>body.label</code>" in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert ":CONSOLE" not in p.stderr and "Uncaught" not in p.stderr  # any console message
    assert "ERR_" not in p.stderr


def test_passing_report_screenshot(craft, tmp_path):
    path = tmp_path / "report.html"
    write_html(report(craft, fail=False), str(path))
    shot = tmp_path / "shot.png"
    p = chromium([f"--screenshot={shot}", "--window-size=1200,1600"], path.as_uri())
    assert p.returncode == 0 and shot.stat().st_size > 20_000, p.stderr[-2000:]
    dom = chromium(["--dump-dom"], path.as_uri()).stdout
    assert "Verdict: PASS" in dom and 'data-verdict="pass"' in dom

"""The README's lab quickstart, run as written (with this test's own lab prefix and output
directory): replay pcaps/lab-mix.pcap against the lab's shadow and compare. The verdict is FAIL for
the shadow's deliberate regressions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from pathlib import Path

import tests.support.prereq as _ct

ROOT = Path(__file__).resolve().parents[2]


def quickstart_script() -> str:
    readme = (ROOT / "README.md").read_text()
    at = readme.index("Replay a capture recorded in the lab")
    match = re.search(r"```sh\n(.*?)```", readme[at:], re.DOTALL)
    assert match, "the quickstart's code block"
    return match.group(1)


def test_readme_quickstart_replays_a_lab_pcap_and_compares(tmp_path):
    _ct.require_root()
    _ct.require_tool("ip")
    prefix = f"stq{uuid.uuid4().hex[:6]}"
    out = tmp_path / "out"
    script = quickstart_script()
    assert (
        "scripts/lab.sh up" in script
        and "shadowtap replay" in script
        and "shadowtap compare" in script
    )
    script = (
        script.replace("stlab-", f"{prefix}-")
        .replace("mkdir -p out", f"mkdir -p {out}")
        .replace(" out/", f" {out}/")
    )
    script = script.replace("--html", f"--json {out}/report.json --html")
    env = dict(os.environ, LAB_PREFIX=prefix)
    try:
        proc = subprocess.run(
            ["bash", "-c", "set -x\n" + script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        subprocess.run(
            [str(ROOT / "scripts" / "lab.sh"), "down"], env=env, capture_output=True, check=False
        )
    # compare's exit status is the verdict (11: fail) and the script ends with lab.sh down (0)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "shadowtap compare" in proc.stderr  # it ran (set -x)
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["result"] == "fail"
    failed = {(m["endpoint"], m["path"]) for m in report["verdict"]["metrics"] if m["failed"]}
    assert ("GET /v1/products/{id}", "body.price") in failed
    assert ("POST /v1/predict", "body.label") in failed
    assert (out / "lab-mix.html").stat().st_size > 10_000
    assert (
        prefix
        not in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, check=False
        ).stdout
    )

"""`twlab report` opened in a real browser: Debian's chromium, headless.

Checks that the ladder's SVG has every segment of a known capture and both endpoints' states, that the
charts were drawn (their colours are on the screenshot), and that the page made no request: chromium's
own net log lists every URL request a page makes; a control page with one external image proves that
the check sees such a request. setup.sh installs chromium for `bash setup.sh test` (CI): there a missing
browser fails the test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from lab.analysis.charts import DEST_COLOURS, SIDE_COLOUR
from lab.core.narrate import LadderRow, ladder_rows
from lab.core.report import Connection
from lab.core.tracker import analyze
from lab.pcap.annotate import capture_t0
from lab.pcap.readers import read_segments

ROOT = Path(__file__).resolve().parents[2]
LOST_FINAL_ACK = ROOT / "captures" / "lost-final-ack.pcapng"
TWLAB = [sys.executable, "-m", "lab"]
BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--host-resolver-rules=MAP * ~NOTFOUND"]   # were a request to leave, it would find no host
BROWSER_TIMEOUT_S = 120
# chromium's own background requests carry no page origin; a page's requests carry its origin ("null" for file:)
BROWSER_INTERNAL = "not an origin"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: setup.sh test installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return found


def browse(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp / f"profile-{page.stem}-{len(list(tmp.glob('profile-*')))}"
    cmd = [chromium(), *BROWSER_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=True)


def page_requests(page: Path, tmp: Path) -> list[str]:
    """The URLs the page itself asked for while chromium loaded it (from chromium's net log)."""
    log = tmp / f"netlog-{page.stem}.json"
    browse(page, tmp, f"--log-net-log={log}", "--net-log-capture-mode=Everything", "--dump-dom")
    doc = json.loads(log.read_text())
    start = doc["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in doc["events"]
            if e["type"] == start and "url" in e.get("params", {})
            and e["params"].get("initiator") != BROWSER_INTERNAL]


def narrator_rows(capture: Path) -> tuple[Connection, list[LadderRow]]:
    """The first connection of a capture and the narrator's ladder rows of it: what the picture must show."""
    segs = list(read_segments(capture))
    conn = analyze(iter(segs)).connections[0]
    return conn, ladder_rows(conn, [s for s in segs if conn.first_frame <= s.frame <= conn.last_frame],
                             capture_t0(capture))


def report(tmp: Path, *inputs: Path | str) -> Path:
    out = tmp / "report.html"
    res = subprocess.run([*TWLAB, "report", *map(str, inputs), "-o", str(out)], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    return out


class Ladders(HTMLParser):
    """From the browser's DOM: per ladder (svg id), its segments' frames and each side's state texts."""

    def __init__(self) -> None:
        super().__init__()
        self.svg = ""
        self.frames: dict[str, list[int]] = {}
        self.states: dict[str, dict[str, dict[int, str]]] = {}   # svg id -> side -> frame -> text
        self.labels: dict[str, list[str]] = {}
        self.time_wait: dict[str, list[tuple[str, str]]] = {}
        self._open: list[tuple[str, str]] = []   # (tag, what its text is)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        cls = a.get("class", "").split()
        what = ""
        if tag == "svg" and "ladder" in cls:
            self.svg = a["id"]
            self.frames[self.svg], self.labels[self.svg], self.time_wait[self.svg] = [], [], []
            self.states[self.svg] = {"client": {}, "server": {}}
        elif self.svg and tag == "g" and "seg" in cls:
            self.frames[self.svg].append(int(a["data-frame"]))
            self.labels[self.svg].append("")      # a wrapped label is several <text>s in its segment's <g>
        elif self.svg and tag == "g" and "state" in cls:
            what = "state:" + ("client" if "client" in cls else "server") + ":" + a["data-frame"]
        elif self.svg and tag == "g" and "time-wait" in cls:
            self.time_wait[self.svg].append((cls[-1], a["data-start-frame"]))
        elif self.svg and tag == "text" and "label" in cls:
            what = "label"
        inherited = next((w for _, w in reversed(self._open) if w), "")
        self._open.append((tag, what or inherited))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break
        if tag == "svg":
            self.svg = ""

    def handle_data(self, data: str) -> None:
        what = self._open[-1][1] if self._open else ""
        if not self.svg or not data.strip():
            return
        if what.startswith("state:"):
            _, side, frame = what.split(":")
            have = self.states[self.svg][side].get(int(frame))
            self.states[self.svg][side][int(frame)] = f"{have} {data.strip()}" if have else data.strip()
        elif what == "label":
            self.labels[self.svg][-1] = f"{self.labels[self.svg][-1]} {data.strip()}".strip()


def dom_of(page: Path, tmp: Path) -> tuple[str, Ladders]:
    dom = browse(page, tmp, "--dump-dom").stdout
    parsed = Ladders()
    parsed.feed(dom)
    return dom, parsed


def colour_pixels(png: Path, hex_colour: str, tolerance: int = 32) -> int:
    """Pixels of about this colour (anti-aliased lines are rarely exact; the ladders' colours are farther)."""
    from PIL import Image

    rgb = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    with Image.open(png) as im:
        return sum(n for n, c in im.convert("RGB").getcolors(maxcolors=1 << 24) or ()
                   if max(abs(a - b) for a, b in zip(c, rgb, strict=True)) <= tolerance)


def external_references(html: str) -> list[str]:
    """Attribute values and CSS that would make a browser fetch something: any URL with a scheme or //."""
    attrs = re.findall(r"""\b(?:src|href|xlink:href|action|poster|data|srcset)\s*=\s*["']?\s*([^"'\s>]+)""", html)
    css = re.findall(r"""url\(\s*["']?([^"')]+)|@import""", html)
    return [v for v in attrs + css if re.match(r"^([a-z][a-z0-9+.-]*:|//|@import)", v, re.I)]


def test_capture_report_in_chromium(tmp_path: Path) -> None:
    out = report(tmp_path, LOST_FINAL_ACK)
    html = out.read_text()
    assert external_references(html) == []
    assert page_requests(out, tmp_path) == []

    dom, ladders = dom_of(out, tmp_path)
    conn, rows = narrator_rows(LOST_FINAL_ACK)
    ladder = f"c0-conn-{conn.id}"
    assert ladders.frames[ladder] == [s.frame for s in read_segments(LOST_FINAL_ACK)]   # every segment, in order
    assert ladders.frames[ladder] == [r.frame for r in rows]
    for r in rows:          # both endpoints' states after every segment, as the narrator says them
        for side in ("client", "server"):
            want = " → ".join(r.passed(side)) or r.state(side)
            assert " ".join(ladders.states[ladder][side][r.frame].split()) == want, (r.frame, side)
    assert ladders.labels[ladder] == [r.label for r in rows]
    assert "TIME_WAIT" in ladders.states[ladder]["client"].values()
    assert any("LAST_ACK" in s for s in ladders.states[ladder]["server"].values())
    assert ladders.time_wait[ladder] == [(w.side, str(w.start_frame)) for w in conn.time_wait]   # the bars
    assert f'href="#{ladder}"' in dom                           # each finding links to its ladder

    shot = tmp_path / "report.png"
    browse(out, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    assert colour_pixels(shot, SIDE_COLOUR["client"]) > 100     # the TIME_WAIT chart's client line
    assert colour_pixels(shot, DEST_COLOURS[0]) > 50            # the rate chart's destination line
    from PIL import Image

    with Image.open(shot) as im:
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 24) or ()) > 200   # not a blank page


def test_the_request_check_sees_a_request(tmp_path: Path) -> None:
    """Control: the same check on a page with an external image and stylesheet reports both."""
    page = tmp_path / "control.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="stylesheet" href="https://example.invalid/a.css">'
                    '</head><body><img src="http://203.0.113.9/x.png"></body></html>')
    assert external_references(page.read_text()) == ["https://example.invalid/a.css", "http://203.0.113.9/x.png"]
    requests = page_requests(page, tmp_path)
    assert "http://203.0.113.9/x.png" in requests
    assert "https://example.invalid/a.css" in requests


def test_corpus_capture_report(tmp_path: Path, corpus: Path) -> None:
    """A third-party capture with a reused four-tuple: each incarnation with a finding gets its ladder."""
    cap = corpus / "deepflow__l4-source-port-reuse.pcap"
    out = report(tmp_path, cap)
    html = out.read_text()
    assert external_references(html) == []
    assert page_requests(out, tmp_path) == []
    _, ladders = dom_of(out, tmp_path)
    assert ladders.frames, "no ladder drawn"
    for svg_id, frames in ladders.frames.items():
        assert frames == sorted(frames) and frames, svg_id
        known = set(ladders.states[svg_id]["client"]) | set(ladders.states[svg_id]["server"])
        assert sorted(known) == frames, svg_id     # a state after every segment (a side never seen has none)
    for anchor in re.findall(r'href="#(c0-conn-\d+)"', html):
        assert anchor in ladders.frames                         # finding links land on a drawn ladder


@pytest.mark.root
def test_run_report_in_chromium(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("twlab run needs root (namespaces, capture)")
    run_dir = tmp_path / "run"
    names = ["who-gets-time-wait", "lost-final-ack"]
    subprocess.run([*TWLAB, "run", *names, "--out", str(run_dir), "-j", "2", "--json"], cwd=ROOT,
                   capture_output=True, text=True, timeout=600)
    out = report(tmp_path, run_dir)
    html = out.read_text()
    assert external_references(html) == []
    assert page_requests(out, tmp_path) == []
    dom, ladders = dom_of(out, tmp_path)
    assert "The claims ledger on kernel" in dom
    assert "TIME_WAIT lets a lost final ACK be re-sent" in dom                 # a claim of the ledger
    for name in names:
        assert f'id="exp-{name}"' in dom
        assert "what the kernel answered" in dom
        drawn = [k for k in ladders.frames if k.startswith(f"{name}-conn-")]
        assert drawn, f"no ladder for {name}"
        for k in drawn:
            states = [*ladders.states[k]["client"].values(), *ladders.states[k]["server"].values()]
            assert any("TIME_WAIT" in x for x in states), k
    for link in re.findall(r'href="([^"#]+\.pcapng)"', html):
        assert (out.parent / link).is_file(), link                            # links to the run's captures


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    for args, code in (([str(tmp_path / "missing.pcap")], 2), ([str(ROOT / "README.md")], 2),
                       ([str(tmp_path)], 2)):
        res = subprocess.run([*TWLAB, "report", *args, "-o", str(tmp_path / "r.html")], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == code, (args, res.stderr)
        assert "Traceback" not in res.stderr and res.stderr.strip().count("\n") <= 1, res.stderr
        assert not (tmp_path / "r.html").exists()
    res = subprocess.run([*TWLAB, "report", str(LOST_FINAL_ACK), "-o", str(tmp_path / "r.txt")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "html" in res.stderr


def test_run_report_survives_bad_captures(tmp_path: Path) -> None:
    """A run folder whose captures are cut short or garbage: their sections say so, the report is written."""
    run_dir = tmp_path / "run"
    whole = LOST_FINAL_ACK.read_bytes()
    captures = {"lost-final-ack": whole[:len(whole) * 2 // 3], "abortive-close": b"\x00garbage" * 40}
    for name, data in captures.items():
        (run_dir / name).mkdir(parents=True)
        (run_dir / name / "capture.pcapng").write_bytes(data)
        (run_dir / name / "result.json").write_text(json.dumps({
            "experiment": name, "reproduced": True, "claim": f"claim of {name}", "kernel": "6.18-test",
            "duration_s": 1.0, "story": [["the lab did", "the kernel answered"]], "notes": [],
            "observations": {}, "capture": str(run_dir / name / "capture.pcapng")}))
    html = report(tmp_path, run_dir).read_text()
    assert "The claims ledger on kernel 6.18-test" in html
    cut, garbage = html.split('id="exp-abortive-close"')[1].split('id="exp-lost-final-ack"')[::-1]
    assert "capture not read:" in garbage and "not a pcap or pcapng file" in garbage
    assert "cut short" in cut and "lost-final-ack-conn-0" in cut     # analyzed up to the cut, ladder drawn

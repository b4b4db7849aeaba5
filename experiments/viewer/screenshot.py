"""The README's screenshot and timings of rcdm-viewer on a checkpoint (default: the `make demo` one).

Starts `rcdm-viewer` as a user would, times how long until the page is served, drives one view of each tab with a
real browser (Playwright over Debian's Chromium: `pip install playwright`, `apt-get install chromium`), times each,
and writes experiments/viewer/screenshot.png. Not part of the test suite (the tests drive the page through
gradio_client and screenshot it with Chromium's own --screenshot).

    python experiments/viewer/screenshot.py [--ckpt outputs/demo/checkpoints/last.ckpt] [--port 7870]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default="outputs/demo/checkpoints/last.ckpt")
    parser.add_argument("--port", type=int, default=7870)
    parser.add_argument("--out", type=Path, default=HERE / "screenshot.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from rcdm_lab.viewer.app import wait_until_served

    url = f"http://127.0.0.1:{args.port}/"
    viewer = shutil.which("rcdm-viewer") or str(Path(sys.executable).parent / "rcdm-viewer")
    started = time.perf_counter()
    process = subprocess.Popen([viewer, f"ckpt={args.ckpt}", f"port={args.port}", "sampling=guided", "samples=6"])
    timings: dict[str, float] = {}
    try:
        timings["served_s"] = round(wait_until_served(url, process), 1)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=shutil.which("chromium"),
                                                 args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1500})
            page.goto(url)
            page.get_by_text("what does the representation keep?").wait_for()
            timings["page_loaded_s"] = round(time.perf_counter() - started, 1)
            page.get_by_label("image A: validation image #").fill("3")
            for tab, button, grid in [("Interpolation", "Interpolate A → B", "interpolation"),
                                      ("Manipulation", "Mask image A's shared dimensions (zero, or B's values)",
                                       "manipulation"),
                                      ("Samples", "Sample image A", "samples")]:
                page.get_by_role("tab", name=tab).click()
                page.get_by_role("button", name=button).click()
                clicked = time.perf_counter()
                page.locator(f"#{grid}-grid img").wait_for(timeout=300_000)   # the view's grid has arrived
                timings[f"{grid}_s"] = round(time.perf_counter() - clicked, 1)
            page.wait_for_timeout(1000)
            page.screenshot(path=str(args.out), full_page=False)
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(json.dumps(timings, indent=2))
    (HERE / "timings.json").write_text(json.dumps({"ckpt": args.ckpt, **timings}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

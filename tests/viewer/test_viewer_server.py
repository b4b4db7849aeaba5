"""rcdm-viewer end to end: the real command serves the page on localhost; gradio's client samples through it; a
headless Chromium renders it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator

import numpy
import pytest
import torch
from PIL import Image

from rcdm_lab.viewer.app import wait_until_served
from rcdm_testing import REPO

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def served_viewer(trained_checkpoint, tmp_path_factory) -> Iterator[str]:
    """rcdm-viewer over the tiny checkpoint on a free localhost port, as a user starts it; its URL."""
    tmp = tmp_path_factory.mktemp("viewer")
    port = free_port()
    log = tmp / "viewer.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rcdm_lab.cli.viewer", f"ckpt={trained_checkpoint}", f"port={port}",
             "sampling.sampler=ddim", "sampling.steps=2", "thumbnails=4", "samples=2", f"hydra.run.dir={tmp / 'out'}"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        try:
            seconds = wait_until_served(url, process)
        except (RuntimeError, TimeoutError) as error:
            pytest.fail(f"{error}:\n{log.read_text()}")
        print(f"rcdm-viewer served its page {seconds:.1f} s after start")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def test_the_api_client_samples_through_the_running_app(served_viewer, tmp_path):
    from gradio_client import Client

    client = Client(served_viewer, verbose=False, download_files=str(tmp_path))
    grid, samples, numbers, variance, command = client.predict(
        1, None, "ddim", 2, 1.0, 0, 2, False, api_name="/samples")
    picture = Image.open(grid)
    assert picture.width > 2 * picture.height / 1.5   # one row: the input, then 2 samples
    assert len(samples) == 2
    assert "‖f(sample) − h‖²" in numbers
    assert command.startswith("rcdm-figure figure=samples ") and "figure.first_image=1" in command
    # A bad request is an error message through the API; the app keeps answering.
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="validation image 99 does not exist"):
        client.predict(99, None, "ddim", 2, 1.0, 0, 2, False, api_name="/samples")
    grid_again, *_ = client.predict(1, None, "ddim", 2, 1.0, 0, 2, False, api_name="/samples")
    assert Image.open(grid_again).size == picture.size


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium: apt-get install chromium "
                                             "(.ci/run installs it)")
def test_a_headless_browser_renders_the_page(served_viewer, tmp_path):
    screenshot = tmp_path / "viewer.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--no-first-run", "--window-size=1280,1000", "--virtual-time-budget=20000",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", served_viewer], capture_output=True, text=True,
                         timeout=120)
    # gradio renders the page in the browser: the title and the controls exist only if its JavaScript ran.
    assert "what does the representation keep?" in dom.stdout, dom.stderr[-2000:]
    assert "Interpolate A → B" in dom.stdout
    subprocess.run([CHROMIUM, *flags, f"--screenshot={screenshot}", served_viewer], capture_output=True,
                   timeout=120, check=True)
    pixels = torch.from_numpy(numpy.asarray(Image.open(screenshot).convert("RGB"))).float()
    # Not blank: a rendered page has text and images -- many colours and contrast, unlike an empty white page.
    distinct = len(torch.unique(pixels.view(-1, 3), dim=0))
    assert distinct > 50 and float(pixels.std()) > 10, (distinct, float(pixels.std()))

"""`make course`, the README's first command: its JupyterLab server starts (as root too), answers its REST API with
the token it prints, and stops.

The command comes from the Makefile itself (`make course-command`), so the test runs what `make course` runs; the
only addition is a free port, so that a course already open on 8888 does not get in the way.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the environment running the tests, which holds jupyter when the dev extras are installed


def course_command(**variables: str) -> list[str]:
    """The jupyter lab command line `make course` runs, as the Makefile prints it."""
    assignments = [f"{k}={v}" for k, v in {"VENV": str(VENV), **variables}.items()]
    printed = subprocess.run(["make", "-s", "--no-print-directory", "course-command", *assignments], cwd=ROOT,
                             check=True, capture_output=True, text=True, timeout=30).stdout
    return printed.split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
needs_jupyterlab = pytest.mark.skipif(not (VENV / "bin" / "jupyter-lab").exists(),
                                      reason=f"jupyter lab is not installed in {VENV} (pip install -e '.[dev]')")


@needs_make
def test_course_command_allows_root_exactly_when_root():
    command = course_command(NO_BROWSER="1")
    assert command[:2] == [str(VENV / "bin" / "jupyter"), "lab"] and command[-1] == "notebooks/"
    assert "--no-browser" in command
    assert ("--allow-root" in command) == (os.getuid() == 0)
    assert "--no-browser" not in course_command()


@needs_make
@needs_jupyterlab
@pytest.mark.timeout(60)
def test_course_server_starts_answers_its_api_and_stops(tmp_path):
    port = free_port()
    command = course_command(NO_BROWSER="1") + [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    # A private runtime folder: the server's connection files never land in the user's ~/.local/share/jupyter.
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(server.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        token, deadline = None, time.monotonic() + 40
        while token is None and time.monotonic() < deadline and server.poll() is None:
            found = re.search(rf"http://(?:127\.0\.0\.1|localhost):{port}/lab\?token=([0-9a-f]+)", "".join(lines))
            token = found.group(1) if found else None
            time.sleep(0.2)
        assert token, f"no URL with a token within 40 s (exit code {server.poll()}):\n" + "".join(lines)[-3000:]
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and b'"started"' in response.read()
        anonymous = urllib.request.Request(f"http://127.0.0.1:{port}/api/status")
        with pytest.raises(urllib.error.HTTPError, match="403"):  # the token is what lets a client in
            urllib.request.urlopen(anonymous, timeout=10)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and any kernel it started, all in its own session
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    assert server.returncode is not None

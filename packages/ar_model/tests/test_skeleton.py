import importlib.metadata

import meditok.ar


def test_version_matches_distribution_metadata():
    assert meditok.ar.__version__ == importlib.metadata.version("meditok-ar")

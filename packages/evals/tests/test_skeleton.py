import importlib.metadata

import meditok.evals


def test_version_matches_distribution_metadata():
    assert meditok.evals.__version__ == importlib.metadata.version("meditok-evals")

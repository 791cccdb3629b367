"""Layer 3, the study: problem sets, intervention conditions and the cached, resumable runner.

Built on the engine (layer 2); knows nothing of statistics, reports or pytest.
"""

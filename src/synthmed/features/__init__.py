"""Feature extractors for feature-based metrics (FID, KID) and the realism filter.

One registry (:mod:`synthmed.features.registry`) names every extractor; metrics and
selection ask it by name and record the extractor's :meth:`FeatureExtractor.describe`
with every result.
"""

from synthmed.features.registry import (DEFAULT_BATCH_SIZE, FeatureExtractor, FeatureExtractorError,
                                        available_extractors, default_cache_dir, get_extractor, register_extractor)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FeatureExtractor",
    "FeatureExtractorError",
    "available_extractors",
    "default_cache_dir",
    "get_extractor",
    "register_extractor",
]

"""Pages of the retrieval app: `model_versions` (model versions and their evaluation reports)
and `review` (the review page of a study, its progress endpoint, Retry and CAM overlays)."""

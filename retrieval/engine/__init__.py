"""Django-free retrieval engine: preprocessing, features, fusion, training, index, query."""

"""Data on disk: contractor-format recordings (``recordings``) and training-data shards (``shards``)."""

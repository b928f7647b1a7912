"""One module per source format; each registers a reader (see ``pipelines.viewsets.registry``)."""

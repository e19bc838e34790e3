"""The feedback-aware sequence model: features, Transformer, training, text vectors, artifacts, registry, scorer."""

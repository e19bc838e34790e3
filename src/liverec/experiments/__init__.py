"""Live experiments: hash-split and team-draft interleaving experiments, their variants and metrics."""

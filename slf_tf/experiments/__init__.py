"""The seed experiments (DESIGN 5): each a ``run(config, workdir)`` driven by a thin absl trainer."""

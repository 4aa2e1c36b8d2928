"""The seed experiments (docs/experiments.md): each a ``run(config, workdir)`` driven by a thin absl trainer."""

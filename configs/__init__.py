"""ml_collections configs: one file per experiment, each with get_config()."""

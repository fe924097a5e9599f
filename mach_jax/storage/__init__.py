"""The workdir on disk: config.json, label counts, repetition groups, metrics, and Orbax checkpoints."""

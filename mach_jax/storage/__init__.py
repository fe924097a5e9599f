"""The workdir on disk: config.json, label counts, repetition groups, metrics, Orbax checkpoints
with their checksums (``integrity``), and the training lock (``lock``)."""

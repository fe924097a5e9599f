"""Read-out: the count-min decoders (exact and approximate), the predict and eval steps, the
trained ensemble, metrics and export."""

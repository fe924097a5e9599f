"""Training: the step, its optimiser and caps, the compiled program, the loop and its logs.
Never imports the read-out."""

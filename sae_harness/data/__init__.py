"""Where the model and the text come from: the real and the embedded setting (presets), the
language model, the training text and probing data, the residual-stream activations."""

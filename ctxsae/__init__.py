"""ctxsae: contextual sparse autoencoders on language-model activations."""

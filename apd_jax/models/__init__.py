"""Target models: pure `init`, `apply(params, x)`, `sample(key, batch_size)`."""

"""Real models as targets: a Flax transformer and the text it learns."""

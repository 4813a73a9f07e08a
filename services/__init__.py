"""Online serving: BentoML services that read features from Feast and score with the registered model."""

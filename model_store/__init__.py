"""Model identity and the platform's settings: shared by flows and services, importing neither."""

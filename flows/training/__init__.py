"""Plain functions of the training stage: data, models, tuning, evaluation, plots, tracking."""

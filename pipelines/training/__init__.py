"""The training stage: features, the model recipe, k selection, MLflow tracking and the registry."""

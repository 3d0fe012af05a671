"""The data stage: the transaction schema, the loader for real UCI files, the dataset generator."""

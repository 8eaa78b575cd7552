"""Scoring records with a trained classifier: metrics, the report and its plots, the model card, cross-validation."""

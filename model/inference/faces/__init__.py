"""Faces in ordinary photos: detection with landmarks, alignment like Adience's, annotated pictures."""

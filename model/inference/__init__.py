"""Using a trained classifier: classify files and photos, faces found and aligned, the SavedModel for serving."""

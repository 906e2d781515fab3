"""OrthoNav phantoms."""

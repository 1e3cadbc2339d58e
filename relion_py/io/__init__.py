"""File formats: RELION STAR text, MRC with RELION's header conventions, tilt-series image sources."""

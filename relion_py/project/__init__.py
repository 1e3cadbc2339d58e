"""The RELION project model: optimisation sets, tomogram sets, particle sets (read from STAR files)."""

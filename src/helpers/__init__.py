"""Helpers for the concept-frequency research compendium.

All logic of the pipeline lives here; the notebooks in ``notebooks/`` only load inputs,
call these functions, show results and write outputs.
"""

__version__ = "0.1.0"

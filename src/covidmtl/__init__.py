"""covidmtl: reproducible multitask deep learning on chest CT for COVID-19.

The package holds the science of the pipeline; the Snakemake rules in
``workflow/rules`` only call its command-line entry points (``covidmtl --help``).
"""

__version__ = "0.1.0"

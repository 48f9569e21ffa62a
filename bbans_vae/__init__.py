"""vaecompress library: VAE models, bits-back ANS coding and generalization-gap measurement.

Math lives here (no printing). Terminals and argument parsing live in `cli/`.
"""
__version__ = "0.1.0"

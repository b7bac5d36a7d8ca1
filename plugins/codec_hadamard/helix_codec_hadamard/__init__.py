"""helix-codec-hadamard: randomized Hadamard rotation of weight rows."""

__version__ = "0.1.0"

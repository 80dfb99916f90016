"""nixbuild: a resilient supervisor for long Nix builds."""

__version__ = "0.1.0"

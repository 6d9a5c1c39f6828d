"""txrelay: an Anthropic Messages API relay for any model backend, built on Twisted."""

__version__ = "0.1.0"

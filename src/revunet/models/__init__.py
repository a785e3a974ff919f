"""Building blocks and architectures of the three papers."""

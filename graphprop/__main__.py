"""``python -m graphprop``: run the built-in example (see :mod:`graphprop.examples`)."""

from .examples import two_moons_demo

if __name__ == "__main__":
    two_moons_demo()

"""Real firmware pairs from pinned Debian and PyPI archives: the catalogue and its fetcher.

`catalogue` describes the pairs, `fetch` downloads and checks them, `archives` and `images`
take the images out of .deb, wheel and sdist archives, `demo` finds the demo's releases.
"""

from fotadelta.samples.catalogue import Catalogue, CatalogueError, PairSpec, load
from fotadelta.samples.fetch import Fetcher, FetchError, Outcome, default_cache

__all__ = ["Catalogue", "CatalogueError", "FetchError", "Fetcher", "Outcome", "PairSpec", "default_cache", "load"]

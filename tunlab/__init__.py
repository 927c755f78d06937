"""tunlab: network-namespace / Mininet labs for VNF chains, with a TUN<->UDP/TCP relay at its core."""

from tunlab.errors import DescriptionError, NeedRoot, TunlabError

__version__ = "0.1.0"

__all__ = ["DescriptionError", "NeedRoot", "TunlabError", "__version__"]

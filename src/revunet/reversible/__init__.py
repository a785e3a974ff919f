"""Model-agnostic reversible-network core: invertible blocks and memory-saving sequences.

Nothing here knows about U-Nets or brain MRI; see :mod:`revunet.models` for that.
"""

from revunet.reversible.base import Inverted, InvertibleModule
from revunet.reversible.coupling import AdditiveCoupling
from revunet.reversible.mixing import OrthogonalChannelMix3d
from revunet.reversible.sequence import ReversibleSequence
from revunet.reversible.squeeze import InvertibleSqueeze3d, LearnableSqueeze3d, squeeze3d, unsqueeze3d

__all__ = [
    "AdditiveCoupling",
    "Inverted",
    "InvertibleModule",
    "InvertibleSqueeze3d",
    "LearnableSqueeze3d",
    "OrthogonalChannelMix3d",
    "ReversibleSequence",
    "squeeze3d",
    "unsqueeze3d",
]

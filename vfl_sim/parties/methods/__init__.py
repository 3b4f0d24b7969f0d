"""The party-side steps of the built-in unlearning methods.

Each module registers the operations (:func:`vfl_sim.parties.party.party_op`) and gradient hooks
(:func:`vfl_sim.parties.party.grad_hook`) of one method family; importing this package registers them
all, so every process that hosts a party (local, Flower ClientApp, Ray actor) knows them.
"""

from vfl_sim.parties.methods import boundary as _boundary  # noqa: F401  (Boundary Shrink's FGSM step)
from vfl_sim.parties.methods import importance as _importance  # noqa: F401  (Fisher and SSD statistics and edits)
from vfl_sim.parties.methods import saliency as _saliency  # noqa: F401  (SalUn mask, l1-sparse subgradient)
from vfl_sim.parties.methods import unsir as _unsir  # noqa: F401  (UNSIR noise at each party)
from vfl_sim.parties.methods import vfl_removal as _vfl_removal  # noqa: F401  (ReMisVFU projected step of the leaving party)

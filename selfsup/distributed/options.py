"""The options of training on several processes."""

from __future__ import annotations

from typing import Optional

import attrs

from selfsup.options import option

SYNC_BATCH_NORMS = (None, "heads", "all")


@attrs.frozen(kw_only=True, slots=False)
class DistributedOptions:
    """Distributed"""

    shuffle_batch_norm: bool = option(False, "MoCo shuffle-BN: permute keys across processes around the momentum "
                                             "encoder")
    gather_keys_for_queue: bool = option(False, "all-gather keys from every process before they enter the queue")
    gather_negatives_across_devices: bool = option(True, "in-batch candidates (negatives, SupCon/NNCLR candidates) "
                                                         "from every process, with gradient; False = this device's "
                                                         "batch only")
    sync_batch_norm: Optional[str] = option(None, "BatchNorm statistics over all processes: None, 'heads' "
                                                  "(projection and prediction MLPs) or 'all' (the encoder too)",
                                            choices=SYNC_BATCH_NORMS)

"""PAPO's implicit perception loss (Wang et al. 2025, "Perception-Aware Policy Optimization for
Multimodal Reasoning", arXiv 2507.06448). Pure torch.

The policy should answer differently when it cannot see the image: PAPO maximises
``KL[pi_theta(o | q, I) || pi_theta(o | q, I_mask)]`` over the sampled responses ``o``, where
``I_mask`` hides a share of the image's patches (0.6 in the paper), next to the GRPO objective:
``J = J_GRPO + gamma * KL_prcp``. An unbounded KL to maximise can be gamed by making both
distributions flat, so a double entropy loss ``eta * (H[pi_theta] + H[pi_theta^mask])`` is
minimised with it. The KL is estimated per sampled token with k3 (``low_var_kl``), like the
GRPO KL loss, and aggregated like the policy loss; gradients flow through both forwards.
"""

from __future__ import annotations

import torch


def mask_patches(pixel_values: torch.Tensor, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """A copy of ``pixel_values`` with ``round(ratio * patches)`` patches, chosen uniformly at
    random, set to 0 (the normalised mean colour: the patch carries no content).

    Args:
        pixel_values: (patches, features), one row per vision patch (Qwen-VL's flattened
            layout: each row is one temporal x spatial patch of the image).
        ratio: share of patches hidden, in [0, 1].
        generator: CPU generator choosing the patches.
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"PAPO mask ratio must be in [0, 1], got {ratio}")
    if pixel_values.dim() != 2:
        raise ValueError(f"pixel_values must be (patches, features), got shape {tuple(pixel_values.shape)}")
    patches = pixel_values.shape[0]
    hidden = torch.randperm(patches, generator=generator)[: round(ratio * patches)]
    masked = pixel_values.clone()
    masked[hidden.to(pixel_values.device)] = 0
    return masked

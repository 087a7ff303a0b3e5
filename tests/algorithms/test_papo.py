import pytest
import torch

from verl.algorithms.papo import mask_patches


def test_mask_patches_hides_the_asked_share_of_rows_and_nothing_else():
    pixel_values = torch.randn(50, 12, generator=torch.Generator().manual_seed(0)) + 5.0  # no zero rows
    masked = mask_patches(pixel_values, 0.6, torch.Generator().manual_seed(1))
    hidden = (masked == 0).all(-1)
    assert int(hidden.sum()) == 30
    torch.testing.assert_close(masked[~hidden], pixel_values[~hidden], rtol=0, atol=0)
    assert torch.equal(mask_patches(pixel_values, 0.0, torch.Generator()), pixel_values)
    with pytest.raises(ValueError, match=r"mask ratio must be in \[0, 1\]"):
        mask_patches(pixel_values, 1.5, torch.Generator())

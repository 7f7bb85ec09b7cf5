import pytest
import torch

from kuosan.diffusion import GaussianMixtureDenoiser


@pytest.fixture
def mixture2d():
    """A 2-D, 3-component Gaussian mixture with full covariances: the test oracle."""
    means = torch.tensor([[-2.0, 0.5], [1.5, 1.5], [1.0, -2.0]])
    covs = torch.tensor([[[0.30, 0.10], [0.10, 0.20]], [[0.15, -0.05], [-0.05, 0.25]], [[0.40, 0.00], [0.00, 0.05]]])
    return GaussianMixtureDenoiser(torch.tensor([0.5, 0.3, 0.2]), means, covs)

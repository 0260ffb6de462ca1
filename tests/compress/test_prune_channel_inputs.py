"""Channel pruning of a model whose forward takes several tensors (a tuple or a dict of them,
as ``mobiledl.core.inputs`` describes), not only one image batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobiledl.compress.prune.channel import prune_channels
from mobiledl.errors import UserError


class ImageAndMeta(nn.Module):
    """A conv branch on an image and a linear branch on a metadata vector, joined by concat."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.side = nn.Linear(4, 16)
        self.head = nn.Linear(32, 2)

    def forward(self, image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        features = F.relu(self.conv2(F.relu(self.bn1(self.conv1(image))))).mean(dim=(2, 3))
        return self.head(torch.cat([features, F.relu(self.side(meta))], dim=1))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 8, 8, generator=generator), torch.randn(2, 4, generator=generator)


@pytest.mark.parametrize("form", ["tuple", "dict"])
def test_prunes_a_two_input_model(form: str) -> None:
    torch.manual_seed(0)
    model = ImageAndMeta().eval()
    image, meta = _inputs()
    example = (image, meta) if form == "tuple" else {"image": image, "meta": meta}
    pruned = prune_channels(model, example, "l1", sparsity=0.5, round_to=4)
    assert pruned.conv1.out_channels == 8
    assert pruned.conv2.in_channels == 8
    assert pruned.side.out_features == 8
    assert pruned(image, meta).shape == (2, 2)


def test_dict_input_naming_no_argument_is_one_line() -> None:
    image, meta = _inputs()
    with pytest.raises(UserError, match=r"\['extra'\], which are not arguments"):
        prune_channels(ImageAndMeta(), {"image": image, "extra": meta}, "l1", sparsity=0.5)


def test_model_failing_on_the_inputs_names_every_shape() -> None:
    image, _ = _inputs()
    with pytest.raises(UserError, match=r"\[2, 3, 8, 8\], \[2, 5\]"):
        prune_channels(ImageAndMeta(), (image, torch.zeros(2, 5)), "l1", sparsity=0.5)

"""Model files of channel-pruned models whose batch norms were folded away still reload."""

from torch import nn

from mobiledl.models.checkpoint import resize_to_state_dict


class ConvBN(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, 2)
        self.norm = nn.BatchNorm1d(2)


def test_norms_without_stored_tensors_follow_their_resized_layer() -> None:
    model = ConvBN(16)
    small = ConvBN(8)
    state = {k: v for k, v in small.state_dict().items() if not k.startswith("bn.")}
    resize_to_state_dict(model, state)
    assert model.conv.out_channels == 8
    assert model.bn.num_features == 8  # folded away in the file: follows the conv
    assert model.norm.num_features == 2  # stored: keeps the stored shape

"""``adapt``'s fine-tuning run comes from its config, field by field, without a copy by hand."""

from mobiledl.train import AdaptConfig, FineTuneConfig
from mobiledl.train.ondevice.adapt import fine_tune_settings


def test_fine_tune_settings_share_every_common_field() -> None:
    config = AdaptConfig(
        strategy="bias", epochs=3, batch_size=8, optimizer="adam", checkpoint_segments=2, seed=5
    )
    expected = FineTuneConfig(
        epochs=3, batch_size=8, optimizer="adam", lr=0.05, checkpoint_segments=2, seed=5
    )
    assert fine_tune_settings(config) == expected
    assert fine_tune_settings(AdaptConfig(strategy="full", lr=0.2)).lr == 0.2

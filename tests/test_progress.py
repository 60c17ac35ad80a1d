"""The progress display's stage clock: the share of a stage done and the time it has left."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rlhf_lab.progress import StageClock, format_seconds, progress_bar, stage_fraction


def _trainer(batches_done: int, per_epoch: int, max_epochs: int, global_step: int = 0, max_steps: int = -1):
    progress = SimpleNamespace(total=SimpleNamespace(completed=batches_done))
    return SimpleNamespace(num_training_batches=per_epoch, max_epochs=max_epochs, max_steps=max_steps, global_step=global_step,
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))


def test_the_share_done_counts_every_epoch_and_the_nearer_limit():
    assert stage_fraction(_trainer(15, per_epoch=10, max_epochs=4)) == pytest.approx(15 / 40)
    # a step limit nearer than the epochs' end decides
    assert stage_fraction(_trainer(15, per_epoch=10, max_epochs=4, global_step=15, max_steps=20)) == pytest.approx(0.75)
    assert stage_fraction(_trainer(15, per_epoch=float("inf"), max_epochs=4)) == 0.0
    assert stage_fraction(_trainer(50, per_epoch=10, max_epochs=4)) == 1.0


def test_the_time_left_is_the_rate_seen_since_the_first_reading():
    clock = StageClock()
    assert clock.seconds_left(0.5, now=100.0) is None  # resumed at half: that half took no time here
    assert clock.seconds_left(0.5, now=110.0) is None
    assert clock.seconds_left(0.6, now=120.0) == pytest.approx(80.0)  # 0.1 in 20 s, 0.4 left
    assert clock.seconds_left(1.0, now=140.0) == 0.0


@pytest.mark.parametrize("seconds, text", [(42, "42s"), (723, "12m03s"), (3900, "1h05m"), (59.6, "1m00s")])
def test_times_read_as_people_write_them(seconds, text):
    assert format_seconds(seconds) == text


def test_a_bar_shows_the_stage_left_while_training():
    import lightning.pytorch as pl
    import torch

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch).sum()

        def train_dataloader(self):
            return torch.utils.data.DataLoader(torch.randn(6, 2), batch_size=1)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    bar, shown = progress_bar("tqdm"), []

    class Spy(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            shown.append(bar.get_metrics(trainer, module).get("stage_left"))

    pl.Trainer(max_epochs=2, callbacks=[bar, Spy()], logger=False, enable_checkpointing=False, enable_model_summary=False,
               accelerator="cpu").fit(Tiny())
    assert shown[0] is None and all(left is not None for left in shown[2:])
    assert shown[-1] == "0s"  # the 12th of 12 batches: nothing left

"""The recipe made into objects: OneCycle's shape, the optimizers, the data subsets and loaders."""
import numpy as np
import pytest
import torch

from cifar_s12.config import RECIPES, make_config
from cifar_s12.dataset import build_loaders, load_data
from cifar_s12.model import CustomResNet
from cifar_s12.onecycle import build_optimizer, build_scheduler, planned_lrs
from cifar_s12.utils import UserError


def test_onecycle_peaks_at_epoch_5_of_24_and_is_linear():
    cfg = make_config("best", max_lr=0.4)
    steps = 10
    lrs = np.array(planned_lrs(cfg, 0.4, steps))
    assert len(lrs) == 24 * steps
    peak = int(lrs.argmax())
    assert abs(peak - 5 * steps) <= 1 and lrs[peak] == pytest.approx(0.4)
    assert lrs[0] == pytest.approx(0.4 / cfg.div_factor)
    assert lrs[-1] == pytest.approx(0.4 / cfg.div_factor / cfg.final_div_factor, rel=0.05)
    up, down = np.diff(lrs[:peak]), np.diff(lrs[peak + 1:])
    assert np.allclose(up, up[0]) and np.allclose(down, down[0]) and down[0] < 0  # linear both ways


def test_optimizers():
    model = CustomResNet()
    sgd = build_optimizer(model, make_config("best"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["weight_decay"] == 5e-4
    assert isinstance(build_optimizer(model, RECIPES["course"]), torch.optim.Adam)
    with pytest.raises(UserError):
        build_optimizer(model, make_config("best", optimizer="rmsprop"))
    sched = build_scheduler(sgd, make_config("best", epochs=2), 0.1, steps_per_epoch=5)
    assert sched.total_steps == 10


def test_load_data_cuts_the_same_subset_whatever_the_seed_and_only_once(data):
    a = load_data(make_config("best", subset=300, test_subset=100, seed=1), data)
    b = load_data(make_config("best", subset=300, test_subset=100, seed=2), data)
    assert len(a.train) == 300 and len(a.test) == 100
    assert np.array_equal(a.train.labels, b.train.labels) and np.array_equal(a.train.images, b.train.images)
    again = load_data(make_config("best", subset=300, test_subset=100), a)  # the DataModule cuts what it is given
    assert np.array_equal(again.train.images, a.train.images) and np.bincount(a.train.labels).tolist() == [30] * 10


def test_loaders_train_shuffled_full_batches_test_in_order(data):
    cfg = make_config("best", subset=300, test_subset=100, batch_size=64, num_workers=0)
    train_loader, test_loader = build_loaders(cfg, load_data(cfg, data))
    assert len(train_loader) == 300 // 64 and len(test_loader) == 2  # no tiny last training batch
    first, again = (next(iter(build_loaders(cfg, load_data(cfg, data))[0]))[1] for _ in range(2))
    assert torch.equal(first, again)  # the same seed gives the same order
    data_ = load_data(cfg, data)
    assert not torch.equal(first, torch.as_tensor(data_.train.labels[:64]))  # shuffled ...
    test_labels = torch.cat([y for _, y in test_loader])
    assert torch.equal(test_labels, torch.as_tensor(data_.test.labels))  # ... the test set in order, all of it

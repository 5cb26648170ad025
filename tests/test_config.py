"""The recipe: presets, overrides from CLI flags, and the round trip through metrics.json and checkpoints."""
import json

import pytest

from cifar_s12.config import RECIPES, TrainConfig, make_config
from cifar_s12.transform import AugmentConfig
from cifar_s12.utils import UserError


def test_best_is_pages_recipe_and_course_the_assignments():
    best, course = RECIPES["best"], RECIPES["course"]
    assert (best.optimizer, best.max_lr, best.batch_size, best.weight_decay, best.epochs) == ("sgd", 0.4, 512, 5e-4, 24)
    assert best.pct_start == pytest.approx(5 / 24) and best.augment.cutout_p == 1.0 and best.logit_scale == 0.125
    assert (course.optimizer, course.max_lr, course.augment.cutout_p, course.label_smoothing) == ("adam", None, 0.5, 0)


def test_overrides_replace_fields_and_none_keeps_the_presets_value():
    cfg = make_config("course", epochs=3, max_lr=None, seed=None)
    assert cfg.recipe == "course" and cfg.epochs == 3 and cfg.max_lr is None and cfg.seed == 1
    assert RECIPES["course"].epochs == 24  # the preset itself is untouched
    with pytest.raises(UserError, match="unknown recipe 'fastest'"):
        make_config("fastest")
    with pytest.raises(TypeError, match="lr_max"):
        make_config("best", lr_max=0.1)


def test_round_trip_through_json_keeps_every_field():
    cfg = make_config("best", augment=AugmentConfig(cutout_p=0.25, gray_p=0.1), subset=100, tta=True)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.augment, AugmentConfig)
    # Fields a newer version no longer has are ignored, so old checkpoints still load.
    assert TrainConfig.from_dict({**cfg.to_dict(), "retired_field": 1}) == cfg


def test_set_changes_any_recipe_field_for_an_ablation_and_refuses_what_is_not_one():
    from cifar_s12.config import apply_settings

    fast = make_config("fast")
    cfg = apply_settings(fast, ["max_lr=0.1", "augment.flip=random", "bn_bias_lr_scale=8", "tta_shift=2"])
    assert (cfg.max_lr, cfg.augment.flip, cfg.bn_bias_lr_scale, cfg.tta_shift) == (0.1, "random", 8, 2)
    assert cfg.augment.cutout_p == fast.augment.cutout_p and cfg.epochs == fast.epochs  # the rest as it was
    for bad, message in ((["foo=1"], "no recipe field 'foo'"), (["epochs=abc"], "epochs is a int"),
                         (["recipe=best"], "no recipe field 'recipe'"), (["epochs"], "write FIELD=VALUE"),
                         (["ema_decay=0.99"], "no recipe field 'ema_decay'")):  # a removed experiment
        with pytest.raises(UserError, match=message):
            apply_settings(fast, bad)

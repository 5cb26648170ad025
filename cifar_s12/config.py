"""The training recipe: every hyper-parameter in one dataclass, and the named presets (``--recipe``).

Both trainers (plain PyTorch and Lightning), the CLI and the notebooks read the recipe from here, so there is
exactly one copy of it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .transform import AugmentConfig
from .utils import UserError

# Where the training augmentations run (TrainConfig.data_path; dataset.build_loaders).
DATA_PATHS = ("albumentations", "batched")


@dataclass
class TrainConfig:
    recipe: str = "best"
    model: str = "custom_resnet"
    dropout: float = 0.0
    logit_scale: float = 0.125     # Page: scaling logits down before the loss keeps early training stable
    epochs: int = 24
    batch_size: int = 512
    optimizer: str = "sgd"         # "sgd" (Nesterov momentum) or "adam"
    max_lr: float | None = 0.4     # None: find it with the LR range test before training
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Targets of 0.82 for the true class and 0.02 for each other: keeps the network from chasing ever larger
    # logits on images it already gets right (Page's later posts and airbench use 0.2). It lifts the loss floor,
    # so train and test losses never approach 0.
    label_smoothing: float = 0.2
    # OneCycle, stepped per batch: linear warm-up to max_lr for pct_start of the run (5 of 24 epochs), then
    # linear annealing (three_phase=False) to max_lr / div_factor / final_div_factor.
    pct_start: float = 5 / 24
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # pad-crop, flip, 8x8 cutout on every image
    # "batched": the augmentations on whole batches on the training device, so a GPU is not starved (docs/data-path.md)
    data_path: str = "albumentations"
    tta: bool = False              # also report test accuracy with horizontal-flip test-time augmentation
    # Parts of the fast recipe; each default leaves best and course as they were.
    tta_shift: int = 0             # with tta: the views moved this many pixels weigh in too (runtime.predict_logits)
    bn_weight_frozen: bool = False  # BatchNorm scales stay at their initial 1 (D. Page)
    bn_bias_lr_scale: float = 1.0  # BatchNorm biases learn at this multiple of the LR, weight decay divided by it
    seed: int = 1
    precision: str = "auto"        # auto | bf16 | fp16 | fp32 (see runtime.autocast_dtype)
    subset: int | None = None      # class-balanced training subset, for quick runs
    test_subset: int | None = None
    num_workers: int | None = None
    data_dir: str | None = None
    download: bool = True          # let torchvision download CIFAR-10 into data_dir when it is missing

    def __post_init__(self) -> None:
        if self.data_path not in DATA_PATHS:
            raise UserError(f"unknown data_path {self.data_path!r}; choose from {', '.join(DATA_PATHS)}")

    def model_kwargs(self) -> dict:
        kwargs = {"logit_scale": self.logit_scale}
        if self.dropout:
            kwargs["dropout"] = self.dropout
        return kwargs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        if isinstance(d.get("augment"), dict):
            d["augment"] = AugmentConfig(**d["augment"])
        return cls(**d)


RECIPES: dict[str, TrainConfig] = {
    # D. Page's "How to train your ResNet" recipe for this architecture: SGD + Nesterov, batch 512, wd 5e-4,
    # linear one-cycle peaking at 0.4 in epoch 5, pad-crop + flip + 8x8 cutout, logits x 0.125; plus label
    # smoothing 0.2 from his later posts, since the minimal recipe reaches 94% only just (docs/measurements.md).
    "best": TrainConfig(),
    # The course's assignment settings: Adam, max LR from the LR range test, cutout half of the time.
    "course": TrainConfig(recipe="course", optimizer="adam", max_lr=None, weight_decay=1e-4, logit_scale=1.0,
                          label_smoothing=0.0,
                          augment=AugmentConfig(cutout_p=0.5)),
    # best in 12 epochs, the network unchanged, with what pays in a short run: batch 256 with the peak LR halved
    # (twice the steps), BatchNorm scales frozen at 1 and biases at 64x the LR (Page), alternating flips, cutout in
    # the first 9 epochs only, flip + 1-pixel-shift test-time augmentation. Its results and what each part adds:
    # docs/measurements.md#the-fast-recipe.
    "fast": TrainConfig(recipe="fast", epochs=12, batch_size=256, max_lr=0.2, tta=True, tta_shift=1,
                        bn_weight_frozen=True, bn_bias_lr_scale=64.0,
                        augment=AugmentConfig(flip="alternating", cutout_epochs=9)),
}


def make_config(recipe: str = "best", **overrides) -> TrainConfig:
    """A preset with some fields replaced; ``None`` values leave the preset's value (handy for CLI flags)."""
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown TrainConfig fields: {sorted(unknown)}")
    return dataclasses.replace(RECIPES[recipe], **changes)


def apply_settings(cfg: TrainConfig, settings: list[str]) -> TrainConfig:
    """``FIELD=VALUE`` strings (the CLI's ``--set``) applied to ``cfg``: any TrainConfig field, or ``augment.FIELD``;
    the value is JSON (``null``, ``true``, ``0.99``, ``"alternating"``) or else a bare string. For ablations:
    ``--recipe fast --set augment.flip=random`` is the fast recipe with random flips, not alternating ones."""
    import json

    top = {f.name: f for f in dataclasses.fields(TrainConfig)}
    nested = {f.name for f in dataclasses.fields(AugmentConfig)}
    for setting in settings:
        name, sep, text = setting.partition("=")
        if not sep:
            raise UserError(f"--set {setting!r}: write FIELD=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        field_name = name[len("augment."):] if name.startswith("augment.") else name
        owner = cfg.augment if name.startswith("augment.") else cfg
        if field_name not in (nested if owner is cfg.augment else set(top) - {"augment", "recipe"}):
            raise UserError(f"--set: no recipe field {name!r}; the fields: "
                            f"{', '.join(sorted(set(top) - {'augment', 'recipe'}))}, augment.{{{','.join(sorted(nested))}}}")
        current = getattr(owner, field_name)
        if not (value is None or current is None or isinstance(value, type(current))
                or (isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool))):
            raise UserError(f"--set {setting}: {name} is a {type(current).__name__} ({current!r} in this recipe)")
        owner = dataclasses.replace(owner, **{field_name: value})
        cfg = dataclasses.replace(cfg, augment=owner) if name.startswith("augment.") else owner
    return cfg


# Where the data is and how it is loaded: not part of the recipe. A resumed run takes them from the new command line
# (and keeps the rest from its checkpoint); two runs that differ only in them ran the same recipe.
LOADING_FIELDS = ("data_dir", "download", "num_workers")


def _as_saved(cfg: TrainConfig) -> dict:
    """``cfg`` as metrics.json holds it (tuples as lists), so it compares equal to a saved run's config."""
    import json

    return json.loads(json.dumps(cfg.to_dict()))


def recipe_differences(saved: dict, cfg: TrainConfig) -> list[str]:
    """Where ``saved`` (a run's ``config``) and ``cfg`` differ as recipes, one ``field: saved -> cfg`` each (the
    loading fields and, when a range test will pick it, the max LR do not count)."""
    theirs, ours = _as_saved(TrainConfig.from_dict(saved)), _as_saved(cfg)
    ignored = {*LOADING_FIELDS, *(["max_lr"] if cfg.max_lr is None else [])}
    flat = [(k, theirs[k], v) for k, v in ours.items() if k not in ignored and k != "augment"]
    flat += [(f"augment.{k}", theirs["augment"][k], v) for k, v in ours["augment"].items()]
    return [f"{name}: {old!r} there, {new!r} here" for name, old, new in flat if old != new]


def same_recipe(saved: dict, cfg: TrainConfig) -> bool:
    """Whether ``saved`` (a run's ``config``, as metrics.json and checkpoints hold it) is ``cfg``'s recipe. A field
    that a run from before it existed lacks counts as its default (defaults leave the recipes as they were); with
    ``cfg.max_lr`` None (an LR range test picks it) any max LR is the one that test found."""
    return not recipe_differences(saved, cfg)


# Fields that are not what makes a run an ablation of its recipe: the seed, the length, the data subset and the
# precision have their own columns in the results table, and --tta only adds a second accuracy.
NOT_RECIPE_CHANGES = ("recipe", "seed", "epochs", "tta", "precision", "subset", "test_subset", *LOADING_FIELDS)


def recipe_changes(saved: dict) -> list[str]:
    """How a run's ``config`` departs from its named recipe, as ``--set`` spells it (``max_lr=0.4``,
    ``augment.flip="random"``): the results table gives an ablation its own row."""
    import json

    recipe = saved.get("recipe", "best")
    if recipe not in RECIPES:
        return []
    theirs, preset = _as_saved(TrainConfig.from_dict(saved)), _as_saved(RECIPES[recipe])
    flat = [(k, v, preset[k]) for k, v in theirs.items() if k != "augment" and k not in NOT_RECIPE_CHANGES]
    # A field this version no longer has (an experiment that lost and left the code): switched on (neither null,
    # false nor 0), the old run is still told apart from its recipe.
    gone = {k: v for k, v in saved.items() if k not in theirs and not isinstance(v, dict)}
    flat += [(k, v, None) for k, v in gone.items() if v not in (None, False, 0)]
    flat += [(f"augment.{k}", v, preset["augment"][k]) for k, v in theirs["augment"].items()]
    return [f"{name}={json.dumps(value)}" for name, value, default in flat if value != default]


def resume_config(saved: dict, cfg: TrainConfig, epochs_done: int, checkpoint) -> TrainConfig:
    """A resumed run keeps the checkpoint's recipe (``saved``, so the OneCycle plan is the same); only where the
    data is and how it is loaded come from the new command line (``cfg``). A finished run is refused (both
    trainers: nothing to resume)."""
    epochs = saved.get("epochs")
    if epochs_done and epochs_done == epochs:
        raise UserError(f"--resume: {checkpoint} is the end of a finished run ({epochs_done} of {epochs} epochs); "
                        f"nothing to do")
    return dataclasses.replace(TrainConfig.from_dict(saved), **{k: getattr(cfg, k) for k in LOADING_FIELDS})

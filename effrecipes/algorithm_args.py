"""The arguments of every registered algorithm: a type and a range for each, in one place.

One pydantic model per name in `effrecipes.algorithms` (`ARGS`), with the constructor's defaults
and the ranges Composer 0.32.1's signatures and docstrings state (the docs are cited per field;
where Composer accepts a value that then crashes mid-run - `interval: 0` dividing by zero, `alpha`
below zero asserting, `0ba` half lives - the range says so). Types are strict (`"16"` is not an
int, `true` is not a number; ints are accepted where a float is asked), numbers finite, and time
strings (`5ep`, `100ba`, `0.5dur`) are checked for their unit and value. `check_args` turns the
first problem into a one-line `RecipeError` naming `algorithms.<name>.<argument>`.

This module imports only pydantic (no Composer, no torch), so recipes are checked cheaply.
`tests/test_algorithm_args` keeps the field names equal to the constructors' parameters.
"""
from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, ValidationError,
                      model_validator)

from effrecipes.errors import RecipeError, closest_first, shorten

# --------------------------------------------------------------------------- time strings

_TIME_RE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(ep|ba|sp|dur|sec)\s*")
UNITS = {"ep": "epochs", "ba": "batches", "sp": "samples", "dur": "fraction of training",
         "sec": "seconds"}


def parse_time(value: Any, units: tuple[str, ...], *, positive: bool = False,
               whole: bool = True) -> tuple[float, str]:
    """A Composer time string (`5ep`, `100ba`, `0.5dur`) -> (value, unit), checked: the unit is one
    of `units`, counts are whole numbers (as Composer requires; `whole=False` for our own epoch
    fields), `dur` is a fraction in [0, 1], and with `positive` the value is above zero. Raises
    ValueError with a message naming what is accepted."""
    examples = {"ep": "5ep", "ba": "100ba", "sp": "1000sp", "dur": "0.5dur", "sec": "3600sec"}
    accepted = ", ".join(f"'{examples[u]}'" for u in units)
    if not isinstance(value, str):
        raise ValueError(f"expected a Composer time string such as {accepted}")
    m = _TIME_RE.fullmatch(value)
    if not m:
        raise ValueError(f"not a time; write e.g. {accepted}")
    x, unit = float(m.group(1)), m.group(2)
    if not math.isfinite(x) or x > 1e15:  # '1e400ba' reads as inf; no run is that long
        raise ValueError(f"{m.group(1).strip()!s:.40} {UNITS[unit]} is too large; at most 1e15")
    if unit not in units:
        raise ValueError(f"unit '{unit}' ({UNITS[unit]}) is not accepted here; use {accepted}")
    if unit == "dur":
        if not 0.0 <= x <= 1.0:
            raise ValueError("a fraction of training ('dur') must be in [0, 1]")
    elif whole and x != int(x):
        raise ValueError(f"{UNITS[unit]} ('{unit}') must be a whole number")
    if positive and x <= 0:
        raise ValueError("must be above zero (zero would divide by zero or never happen)")
    return x, unit


def TimeStr(*units: str, positive: bool = False) -> Any:
    """A string field holding a Composer time string in one of `units`."""
    def check(v: str) -> str:
        parse_time(v, units, positive=positive)
        return v
    return Annotated[str, AfterValidator(check)]


WholeBaEp = TimeStr("ba", "ep", positive=True)   # a period: whole batches or epochs, > 0
DurBaEp = TimeStr("dur", "ba", "ep")
DurEp = TimeStr("dur", "ep")
Dur = TimeStr("dur")


# --------------------------------------------------------------------------- the specs

MAX_CHAIN = 50  # sanity bound on augmentation chains (ops per image), not a Composer limit


class AlgorithmArgs(BaseModel):
    """Base: unknown arguments are errors, types strict, numbers finite."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


AugSet = Literal["all", "safe", "original"]  # composer.algorithms.utils augmentation_sets


class AugMixArgs(AlgorithmArgs):
    severity: int = Field(3, ge=0, le=10, description="augmentation severity, 0..10 (Composer)")
    depth: int = Field(-1, ge=-1, le=MAX_CHAIN,
                       description="augmentations per chain; -1 = random in [1, 3]")
    width: int = Field(3, ge=1, le=MAX_CHAIN, description="number of chains (Composer: >= 1)")
    alpha: float = Field(1.0, gt=0, description="Beta/Dirichlet pseudocount (Composer: must be > 0)")
    augmentation_set: AugSet = Field("all", description="all | safe | original")

    @model_validator(mode="after")
    def _depth(self) -> "AugMixArgs":
        if self.depth == 0:
            raise ValueError("depth: use -1 (random in [1, 3]) or a chain length >= 1, not 0")
        return self


class BlurPoolArgs(AlgorithmArgs):
    replace_convs: bool = Field(True, description="blur strided convs")
    replace_maxpools: bool = Field(True, description="blur max-pools")
    blur_first: bool = Field(True, description="blur before the conv")
    min_channels: int = Field(16, ge=0, description="skip layers with fewer input channels")

    @model_validator(mode="after")
    def _something(self) -> "BlurPoolArgs":
        if not self.replace_convs and not self.replace_maxpools:
            raise ValueError("replace_convs and replace_maxpools are both false: BlurPool would "
                             "change nothing; set one to true")
        return self


class ChannelsLastArgs(AlgorithmArgs):
    pass


class ColOutArgs(AlgorithmArgs):
    p_row: float = Field(0.15, ge=0, le=1, description="fraction of rows dropped")
    p_col: float = Field(0.15, ge=0, le=1, description="fraction of columns dropped")
    batch: bool = Field(True, description="apply per batch (true) or per sample")
    resize_target: Union[bool, Literal["auto"]] = Field("auto", description="true | false | auto")

    @model_validator(mode="after")
    def _resize(self) -> "ColOutArgs":
        if self.resize_target is True and not self.batch:
            raise ValueError("resize_target: true needs batch: true (Composer does not support "
                             "resizing targets per sample)")
        return self


class CutMixArgs(AlgorithmArgs):
    alpha: float = Field(1.0, ge=0, description="Beta pseudocount (Composer asserts >= 0)")
    interpolate_loss: bool = Field(False, description="interpolate the loss, not the labels")
    uniform_sampling: bool = Field(False, description="every pixel equally likely to be mixed")


class CutOutArgs(AlgorithmArgs):
    """effrecipes.algorithms.PerImageCutOut (Composer's CutOut with a square per image)."""

    num_holes: int = Field(1, ge=0, le=1000, description="squares cut per image")
    length: float = Field(0.5, ge=0, description="side: a fraction of the image (< 1) or pixels (>= 1)")
    uniform_sampling: bool = Field(False, description="every pixel equally likely to be masked")
    per_image: bool = Field(True, description="an independent square per image")


class EMAArgs(AlgorithmArgs):
    half_life: Optional[WholeBaEp] = Field(
        "1000ba", description="half life, whole batches or epochs (> 0); null to use smoothing")
    smoothing: Optional[float] = Field(None, gt=0, lt=1, description="decay in (0, 1), "
                                       "instead of half_life")
    ema_start: DurBaEp = Field(
        "0.0dur", description="when averaging starts")
    update_interval: Optional[WholeBaEp] = Field(
        None, description="update period (default: 1 in half_life's unit)")

    @model_validator(mode="after")
    def _one_of(self) -> "EMAArgs":
        if self.half_life is None and self.smoothing is None:
            raise ValueError("set half_life (e.g. '1000ba') or smoothing")
        if self.half_life is not None and self.smoothing is not None:
            raise ValueError("half_life and smoothing are exclusive; with smoothing set "
                             "half_life: null")
        if self.half_life is not None and self.update_interval is not None and \
                self.half_life.strip()[-2:] != self.update_interval.strip()[-2:]:
            raise ValueError("half_life and update_interval must use the same unit (ba or ep)")
        return self


class FactorizeArgs(AlgorithmArgs):
    factorize_convs: bool = Field(True, description="factorize Conv2d modules")
    factorize_linears: bool = Field(True, description="factorize Linear modules")
    min_channels: int = Field(256, ge=1, description="skip convs with fewer in/out channels")
    latent_channels: Union[int, float] = Field(
        0.25, gt=0, description="latent channels: a count >= 1 or a fraction in (0, 1)")
    min_features: int = Field(256, ge=1, description="skip linears with fewer in/out features")
    latent_features: Union[int, float] = Field(
        128, gt=0, description="latent features: a count >= 1 or a fraction in (0, 1)")

    @model_validator(mode="after")
    def _latent(self) -> "FactorizeArgs":
        for key in ("latent_channels", "latent_features"):
            v = getattr(self, key)
            if v >= 1 and v != int(v):
                raise ValueError(f"{key}: a count must be a whole number (or a fraction < 1)")
        return self


class GhostBatchNormArgs(AlgorithmArgs):
    ghost_batch_size: int = Field(32, ge=1, description="sub-batch size (<= the batch size)")


class GradientClippingArgs(AlgorithmArgs):
    clipping_type: Literal["adaptive", "norm", "value"] = Field(description="adaptive | norm | value")
    clipping_threshold: float = Field(gt=0, description="the clipping threshold (> 0)")


class GyroDropoutArgs(AlgorithmArgs):
    p: float = Field(0.5, ge=0, lt=1, description="dropout ratio in [0, 1)")
    sigma: int = Field(256, ge=1, description="pre-selected subnetworks")
    tau: int = Field(16, ge=1, description="subnetworks scheduled concurrently per iteration")


class LabelSmoothingArgs(AlgorithmArgs):
    smoothing: float = Field(0.1, ge=0, le=1, description="strength in [0, 1] (Composer)")


class LayerFreezingArgs(AlgorithmArgs):
    freeze_start: float = Field(0.5, ge=0, lt=1, description="fraction of training before freezing, [0, 1)")
    freeze_level: float = Field(1.0, ge=0, le=1, description="largest fraction of layers frozen")


class MixUpArgs(AlgorithmArgs):
    alpha: float = Field(0.2, ge=0, description="Beta pseudocount (Composer asserts >= 0)")
    interpolate_loss: bool = Field(False, description="interpolate the loss, not the labels")


class ProgressiveResizingArgs(AlgorithmArgs):
    mode: Literal["crop", "resize"] = Field("resize", description="crop | resize")
    initial_scale: float = Field(0.5, gt=0, le=1, description="initial image scale in (0, 1]")
    finetune_fraction: float = Field(0.2, ge=0, le=1, description="final full-size fraction")
    delay_fraction: float = Field(0.5, ge=0, le=1, description="fraction before resizing ramps")
    size_increment: int = Field(4, ge=1, description="align sizes to a multiple of this")
    resize_targets: bool = Field(False, description="resize the targets too")

    @model_validator(mode="after")
    def _fractions(self) -> "ProgressiveResizingArgs":
        if self.delay_fraction + self.finetune_fraction > 1:
            raise ValueError("delay_fraction + finetune_fraction must be <= 1 (Composer)")
        return self


class RandAugmentArgs(AlgorithmArgs):
    severity: int = Field(9, ge=0, le=10, description="augmentation severity, 0..10 (Composer)")
    depth: int = Field(2, ge=0, le=MAX_CHAIN, description="augmentations per image (Composer: >= 0)")
    augmentation_set: AugSet = Field("all", description="all | safe | original")


class SAMArgs(AlgorithmArgs):
    rho: float = Field(0.05, ge=0, description="neighbourhood size (0 perturbs nothing: reported)")
    epsilon: float = Field(1e-12, gt=0, description="added to the gradient norm for stability")
    interval: int = Field(1, ge=1, description="run SAM every this many steps (>= 1)")


class SelectiveBackpropArgs(AlgorithmArgs):
    start: float = Field(0.5, ge=0, le=1, description="start, fraction of training")
    end: float = Field(0.9, ge=0, le=1, description="end, fraction of training")
    keep: float = Field(0.5, gt=0, le=1, description="fraction of each batch kept, (0, 1]")
    scale_factor: float = Field(1.0, gt=0, le=1, description="downsampling for the selection pass, (0, 1]")
    interrupt: int = Field(2, ge=0, description="a plain step every this many batches (0 = never)")

    @model_validator(mode="after")
    def _interval(self) -> "SelectiveBackpropArgs":
        if self.start >= self.end:
            raise ValueError("start must be < end (otherwise selective backprop never runs)")
        return self


class SqueezeExciteArgs(AlgorithmArgs):
    latent_channels: float = Field(64, gt=0, description="hidden width: a count >= 1 or a "
                                   "fraction (< 1) of the conv's channels")
    min_channels: int = Field(128, ge=0, description="add SE only after convs with at least this "
                              "many channels")


class StochasticDepthArgs(AlgorithmArgs):
    target_layer_name: Literal["ResNetBottleneck"] = Field(
        description="block type to make stochastic (Composer supports ResNetBottleneck only)")
    stochastic_method: Literal["block", "sample"] = Field("block", description="block | sample")
    drop_rate: float = Field(0.2, ge=0, le=1, description="base drop probability in [0, 1]")
    drop_distribution: Literal["uniform", "linear"] = Field("linear", description="uniform | linear")
    drop_warmup: Union[float, Dur] = Field(
        0.0, description="fraction of training (or 'Ndur') to ramp the drop rate")

    @model_validator(mode="after")
    def _warmup(self) -> "StochasticDepthArgs":
        w = self.drop_warmup
        x = parse_time(w, ("dur",))[0] if isinstance(w, str) else float(w)
        if not 0 <= x <= 1:
            raise ValueError("drop_warmup must be a fraction of training in [0, 1]")
        if self.stochastic_method == "sample" and x != 0:
            raise ValueError("drop_warmup cannot be used with stochastic_method: sample")
        return self


class SWAArgs(AlgorithmArgs):
    """effrecipes.algorithms.SWAWithBNUpdate (Composer's SWA + BatchNorm recompute)."""

    swa_start: DurEp = Field(
        "0.75dur", description="when averaging starts ('dur' or 'ep', same unit as swa_end)")
    swa_end: DurEp = Field(
        "0.97dur", description="when the average is swapped in")
    update_interval: WholeBaEp = Field(
        "1ep", description="averaging period, whole batches or epochs (> 0)")
    schedule_swa_lr: bool = Field(False, description="SWA learning-rate schedule while averaging")
    anneal_strategy: Literal["linear", "lin", "cos", "cosine"] = Field(
        "linear", description="linear | cos")
    anneal_steps: int = Field(10, ge=1, description="averaging updates to anneal over (>= 1)")
    swa_lr: Optional[float] = Field(None, gt=0, description="final SWA learning rate (null: none)")
    bn_update_batches: int = Field(16, ge=0, le=100_000,
                                   description="training batches to recompute BatchNorm statistics")

    @model_validator(mode="after")
    def _order(self) -> "SWAArgs":
        (s, su), (e, eu) = parse_time(self.swa_start, ("dur", "ep")), parse_time(self.swa_end, ("dur", "ep"))
        if su != eu:
            raise ValueError(f"swa_start and swa_end must use the same unit (got {su} and {eu})")
        if s >= e:
            raise ValueError("swa_end must be > swa_start")
        return self


class WeightStandardizationArgs(AlgorithmArgs):
    n_last_layers_ignore: int = Field(0, ge=0, description="final layers left unstandardised")


class WhitenStemArgs(AlgorithmArgs):
    """effrecipes.whitening.WhitenStem (the first conv set to a whitening of the input patches)."""

    images: int = Field(5000, ge=1, le=10_000_000,
                        description="training images (per rank) whose patches estimate the covariance")
    eps: float = Field(5e-4, gt=0, description="added to each eigenvalue before 1/sqrt (> 0)")
    freeze: bool = Field(False, description="keep the whitened filters fixed (no weight gradient)")


ARGS: dict[str, type[AlgorithmArgs]] = {
    "augmix": AugMixArgs,
    "blurpool": BlurPoolArgs,
    "channels_last": ChannelsLastArgs,
    "colout": ColOutArgs,
    "cutmix": CutMixArgs,
    "cutout": CutOutArgs,
    "ema": EMAArgs,
    "factorize": FactorizeArgs,
    "ghost_batchnorm": GhostBatchNormArgs,
    "gradient_clipping": GradientClippingArgs,
    "gyro_dropout": GyroDropoutArgs,
    "label_smoothing": LabelSmoothingArgs,
    "layer_freezing": LayerFreezingArgs,
    "mixup": MixUpArgs,
    "progressive_resizing": ProgressiveResizingArgs,
    "randaugment": RandAugmentArgs,
    "sam": SAMArgs,
    "selective_backprop": SelectiveBackpropArgs,
    "squeeze_excite": SqueezeExciteArgs,
    "stochastic_depth": StochasticDepthArgs,
    "swa": SWAArgs,
    "weight_standardization": WeightStandardizationArgs,
    "whiten_stem": WhitenStemArgs,
}


def check_args(name: str, kwargs: dict[str, Any], *, file: str = "<recipe>") -> AlgorithmArgs:
    """Validate one algorithm's kwargs against its spec; the first problem as a RecipeError
    naming `algorithms.<name>[.<argument>]`."""
    spec = ARGS.get(name)
    if spec is None:  # a registered algorithm without a spec is a bug, caught by the tests
        raise RecipeError(f"no argument spec for algorithm {name!r}", file=file,
                          field=f"algorithms.{name}")
    if not isinstance(kwargs, dict):
        raise RecipeError("expected a mapping of arguments", file=file, field=f"algorithms.{name}")
    valid = list(spec.model_fields)
    for key in kwargs:
        if key not in valid:
            raise RecipeError(f"unknown argument {shorten(key)!r}; valid (closest first): "
                              f"{', '.join(closest_first(str(key), valid)) or '(none)'}", file=file,
                              field=f"algorithms.{name}.{shorten(str(key), 60)}")
    try:
        return spec.model_validate(kwargs)
    except ValidationError as err:
        raise pydantic_error(err, valid, f"algorithms.{name}", file) from None


def pydantic_error(err: ValidationError, valid: list[str], prefix: str, file: str) -> RecipeError:
    """The first failing field of `err` as one line. A union field (`true | false | 'auto'`)
    fails once per alternative: our own check's message wins, else the alternatives are joined."""
    errors = err.errors()
    first = errors[0]

    def field_of(e: Any) -> list[str]:
        return [str(p) for p in e["loc"] if isinstance(p, str) and p in valid][:1]

    loc = field_of(first)
    same = [e for e in errors if field_of(e) == loc]
    ours = [e for e in same if e["type"] == "value_error"]
    if ours:
        first, msg = ours[0], ours[0]["msg"].removeprefix("Value error, ")
    else:
        msgs = list(dict.fromkeys(e["msg"] for e in same))
        msg = " or ".join([msgs[0]] + [m.removeprefix("Input should be ") for m in msgs[1:]])
    if first["type"] == "missing":
        msg = "required argument is missing"
    elif loc and "input" in first:
        msg = f"{msg} (got {shorten(repr(first['input']), 60)})"
    return RecipeError(msg, file=file, field=".".join([prefix, *loc]))

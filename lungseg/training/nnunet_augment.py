"""nnU-Net v2's 2-D training augmentation, in torch, on the batch's device, driven by a ``torch.Generator``.

The transforms, their order, probabilities and ranges are those of
``nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py`` (``nnUNetTrainer.get_training_transforms`` and
``configure_rotation_dummyDA_mirroring_and_inital_patch_size``, 2-D branch), each implemented as the
batchgeneratorsv2 transform it names does it (``batchgeneratorsv2/transforms/...``; docs/nnunet.md
cites every one). nnU-Net applies them to each sample separately (``RandomTransform(...,
apply_probability=p)``): so does this module, per image of the batch.

==  ===================================  ======  ==========================================================
#   transform (batchgeneratorsv2)        p       what, per image (per channel where nnU-Net says so)
==  ===================================  ======  ==========================================================
1   ``SpatialTransform``                 .2/.2   rotation U(-180°, 180°) (±15° when the slice's sides
                                                 differ by more than 1.5×), p .2; isotropic scale
                                                 U(0.7, 1.4), p .2, drawn independently; scale > 1 makes
                                                 objects *smaller* (it scales the sampling grid);
                                                 bilinear, zero padding, about the centre
2   ``GaussianNoiseTransform``           .1      + N(0, σ²), σ ~ U(0, 0.1), one field for all channels
3   ``GaussianBlurTransform``            .2      per channel with p .5: σ ~ U(0.5, 1) per axis, separable
                                                 kernel of ``round_to_odd(6σ + .5)`` taps, reflect padding
4   ``MultiplicativeBrightnessTransform``  .15   × m per channel, m ~ BGContrast(0.75, 1.25)
5   ``ContrastTransform``                .15     (x − mean)·f + mean per channel, f ~ BGContrast(0.75, 1.25),
                                                 clipped to the channel's range before (``preserve_range``)
6   ``SimulateLowResolutionTransform``   .25     per channel with p .5: nearest-exact down to
                                                 ``round(size·s)``, s ~ U(0.5, 1) (both axes), bilinear back
7   ``GammaTransform`` (inverted)        .1      x → −x, gamma γ ~ BGContrast(0.7, 1.5) on the range,
                                                 mean and std restored, → −x
8   ``GammaTransform``                   .3      the same without the inversion
9   ``MirrorTransform``                  .5/.5   flip along each spatial axis with p .5 (both axes)
==  ===================================  ======  ==========================================================

``BGContrast(lo, hi)`` (``batchgeneratorsv2/transforms/intensity/contrast.py``): with p .5 a factor
U(lo, 1), otherwise U(1, hi). The masks get the spatial transforms only (1 and 9): the one-hot labels
are resampled bilinearly and each pixel takes the arg-max label, padding counting as background — for a
binary mask a threshold at 0.5. That is nnU-Net's rule (``SpatialTransform._apply_to_segmentation``
with ``bg_style_seg_sampling=False``: a label whose interpolated share exceeds 0.7 wins, the rest go
to the arg-max; with shares summing to at most 1 both pick the arg-max).

Intensity space
    The intensity magnitudes (noise σ ≤ 0.1, brightness ×0.75–1.25, …) are nnU-Net's, and nnU-Net
    applies them to *z-scored* data (its preprocessing normalises before the data loader:
    ``nnUNetTrainer.get_training_transforms`` runs on ``CTNormalization.run``'s output), so noise
    σ 0.1 is 0.1 foreground std and brightness scales about the foreground mean. lungseg stores the
    slice in [0, 1] and the network z-scores it (:mod:`lungseg.models.input_norm`), so
    :func:`apply` takes an :class:`IntensitySpace` and runs transforms 2–8 on
    ``z = (x − mean) / std`` (after clipping to the percentiles where the space has them, as
    ``CTNormalization.run`` does), then maps back with ``x = z·std + mean``. The space is
    :func:`intensity_space`: the model's ``input_norm`` record (``preprocess.normalization:
    ct_zscore``: the training split's foreground statistics) when it has one, otherwise (``window``
    data) the same statistics — foreground mean and population std — computed from the training
    images and masks. Without a space (``space=None``) the transforms act on the values as given.
    Nothing is clipped after augmentation here; the ct_zscore network clips its input to the
    percentiles again (a deviation: nnU-Net lets augmented values leave the range, docs/nnunet.md).
    The spatial transform (1) and mirroring (9) are linear in the values and run in the stored units.

Randomness
    :func:`draw` takes every random number from ``generator`` (a CPU generator) in a fixed order and
    amount, whatever is switched on, so the parameters of a batch depend only on the generator's state
    and the batch shape. The Gaussian-noise *field* is the one thing too large to draw there: ``draw``
    takes one 63-bit seed for it, and :func:`apply` makes the field on the batch's device from a
    generator of that device seeded with it — the same seed gives the same batch on a given device
    (CPU and CUDA fields differ, as their generators do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# 1. SpatialTransform (nnUNetTrainer.get_training_transforms; rotation range from
#    configure_rotation_dummyDA_mirroring_and_inital_patch_size, 2-D branch)
P_ROTATION = 0.2
ROTATION_DEG = 180.0
ROTATION_DEG_ELONGATED = 15.0
ELONGATED_ASPECT = 1.5
P_SCALING = 0.2
SCALING = (0.7, 1.4)
# 2. GaussianNoiseTransform(noise_variance=(0, 0.1)) — the sampled value is used as the std
P_NOISE = 0.1
NOISE_STD = (0.0, 0.1)
# 3. GaussianBlurTransform(blur_sigma=(0.5, 1.), p_per_channel=0.5)
P_BLUR = 0.2
P_BLUR_CHANNEL = 0.5
BLUR_SIGMA = (0.5, 1.0)
BLUR_TRUNCATE = 6.0
BLUR_MAX_TAPS = 7
# 4. MultiplicativeBrightnessTransform(BGContrast((0.75, 1.25)))
P_BRIGHTNESS = 0.15
BRIGHTNESS = (0.75, 1.25)
# 5. ContrastTransform(BGContrast((0.75, 1.25)), preserve_range=True)
P_CONTRAST = 0.15
CONTRAST = (0.75, 1.25)
# 6. SimulateLowResolutionTransform(scale=(0.5, 1), synchronize_axes=True, p_per_channel=0.5)
P_LOWRES = 0.25
P_LOWRES_CHANNEL = 0.5
LOWRES_SCALE = (0.5, 1.0)
# 7./8. GammaTransform(BGContrast((0.7, 1.5)), p_invert_image=1 / 0, p_retain_stats=1)
P_GAMMA_INVERTED = 0.1
P_GAMMA = 0.3
GAMMA = (0.7, 1.5)
# 9. MirrorTransform(allowed_axes=(0, 1))
P_MIRROR = 0.5


@dataclass(frozen=True)
class NnunetAugmentParams:
    """The random draws for a batch of shape ``(B, C, H, W)`` (CPU; float64 values, bool switches)."""

    rotate: torch.Tensor
    """(B,) bool"""
    angle: torch.Tensor
    """(B,) radians"""
    scale_on: torch.Tensor
    scale: torch.Tensor
    noise_on: torch.Tensor
    noise_std: torch.Tensor
    noise_seed: int
    blur_on: torch.Tensor
    """(B, C) bool: the image is picked (p .2) and so is the channel (p .5)"""
    blur_sigma: torch.Tensor
    """(B, C, 2): σ along H and along W"""
    brightness_on: torch.Tensor
    brightness: torch.Tensor
    """(B, C)"""
    contrast_on: torch.Tensor
    contrast: torch.Tensor
    """(B, C)"""
    lowres_on: torch.Tensor
    """(B, C) bool"""
    lowres_scale: torch.Tensor
    """(B, C)"""
    gamma_inv_on: torch.Tensor
    gamma_inv: torch.Tensor
    """(B, C)"""
    gamma_on: torch.Tensor
    gamma: torch.Tensor
    """(B, C)"""
    mirror: torch.Tensor
    """(B, 2) bool: flip along H, along W"""

    def spatial(self) -> torch.Tensor:
        """(B,) bool: images that are rotated and/or scaled (the others are not resampled at all)."""
        return self.rotate | self.scale_on

    def theta(self) -> torch.Tensor:
        """``(B, 2, 3)`` float64 ``affine_grid`` matrices (output → input): ``s·R(angle)``, no shift —
        the grid ``SpatialTransform`` builds for a patch the size of the image, about its centre."""
        a = torch.where(self.rotate, self.angle, torch.zeros_like(self.angle))
        s = torch.where(self.scale_on, self.scale, torch.ones_like(self.scale))
        cos, sin, zero = s * torch.cos(a), s * torch.sin(a), torch.zeros_like(a)
        return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)


def rotation_deg(height: int, width: int) -> float:
    """nnU-Net's 2-D rotation range: ±180°, or ±15° when the longer side exceeds 1.5× the shorter."""
    return ROTATION_DEG_ELONGATED if max(height, width) / min(height, width) > ELONGATED_ASPECT else ROTATION_DEG


def _uniform(shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen, dtype=torch.float64)


def _bg_contrast(shape: tuple[int, ...], rng: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """``BGContrast(rng)``: with p .5 U(lo, 1), otherwise U(1, hi) (always U(1, hi) when lo ≥ 1)."""
    lo, hi = rng
    low_side = (torch.rand(shape, generator=gen) < 0.5) & (lo < 1)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return torch.where(low_side, lo + (1 - lo) * u, max(lo, 1.0) + (hi - max(lo, 1.0)) * u)


def _p(shape: tuple[int, ...], p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen) < p


def draw(shape: tuple[int, ...] | torch.Size, generator: torch.Generator) -> NnunetAugmentParams:
    """The parameters for a batch of ``shape`` ``(B, C, H, W)``, drawn from ``generator`` (CPU) in a
    fixed order and amount."""
    b, c, h, w = shape
    rot = rotation_deg(h, w) * math.pi / 180.0
    g = generator
    rotate, angle = _p((b,), P_ROTATION, g), _uniform((b,), -rot, rot, g)
    scale_on, scale = _p((b,), P_SCALING, g), _uniform((b,), *SCALING, g)
    noise_on, noise_std = _p((b,), P_NOISE, g), _uniform((b,), *NOISE_STD, g)
    noise_seed = int(torch.randint(0, 2**63 - 1, (1,), generator=g))
    blur_on = _p((b, 1), P_BLUR, g) & _p((b, c), P_BLUR_CHANNEL, g)
    blur_sigma = _uniform((b, c, 2), *BLUR_SIGMA, g)
    brightness_on, brightness = _p((b,), P_BRIGHTNESS, g), _bg_contrast((b, c), BRIGHTNESS, g)
    contrast_on, contrast = _p((b,), P_CONTRAST, g), _bg_contrast((b, c), CONTRAST, g)
    lowres_on = _p((b, 1), P_LOWRES, g) & _p((b, c), P_LOWRES_CHANNEL, g)
    lowres_scale = _uniform((b, c), *LOWRES_SCALE, g)
    gamma_inv_on, gamma_inv = _p((b,), P_GAMMA_INVERTED, g), _bg_contrast((b, c), GAMMA, g)
    gamma_on, gamma = _p((b,), P_GAMMA, g), _bg_contrast((b, c), GAMMA, g)
    mirror = _p((b, 2), P_MIRROR, g)
    return NnunetAugmentParams(
        rotate, angle, scale_on, scale, noise_on, noise_std, noise_seed, blur_on, blur_sigma,
        brightness_on, brightness, contrast_on, contrast, lowres_on, lowres_scale,
        gamma_inv_on, gamma_inv, gamma_on, gamma, mirror,
    )  # fmt: skip


def _idx(flags: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.nonzero(flags, as_tuple=False).flatten().to(device)


def _spatial(
    images: torch.Tensor, masks: torch.Tensor, params: NnunetAugmentParams, num_classes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """1. rotation/scaling of the picked images (bilinear, zero padding) and their masks (one-hot
    bilinear, arg-max; the padding is background). The other images are left exactly as they were."""
    on = params.spatial()
    if not bool(on.any()):
        return images, masks
    idx = _idx(on, images.device)
    x, y = images.index_select(0, idx), masks.index_select(0, idx)
    theta = params.theta()[on].to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    k = num_classes if num_classes is not None else int(masks.max()) + 1
    onehot = F.one_hot(y.long(), max(k, 2)).permute(0, 3, 1, 2).to(images.dtype)
    shares = F.grid_sample(onehot, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = shares.argmax(1).to(masks.dtype)
    return images.index_copy(0, idx, x), masks.index_copy(0, idx, y)


def _noise(x: torch.Tensor, params: NnunetAugmentParams) -> torch.Tensor:
    """2. additive Gaussian noise, one field per image shared by its channels (``synchronize_channels``)."""
    if not bool(params.noise_on.any()):
        return x
    idx = _idx(params.noise_on, x.device)
    gen = torch.Generator(device=x.device).manual_seed(params.noise_seed)
    field = torch.randn((len(idx), 1, *x.shape[2:]), generator=gen, device=x.device, dtype=x.dtype)
    std = params.noise_std[params.noise_on].to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)
    return x.index_add(0, idx, (field * std).expand(-1, x.shape[1], -1, -1))


def _round_to_nearest_odd(n: float) -> int:
    """batchgeneratorsv2's ``_round_to_nearest_odd`` (Python's ``round``: halves go to even)."""
    r = round(n)
    if r % 2 == 1:
        return r
    return r + 1 if n - r >= 0 else r - 1


def gaussian_kernel(sigma: float, taps: int = BLUR_MAX_TAPS) -> torch.Tensor:
    """batchgeneratorsv2's ``_build_kernel(sigma, truncate=6)`` (float64), centred in ``taps`` taps
    with zeros around it — the same filter on any padding at least as wide."""
    k = _round_to_nearest_odd(sigma * BLUR_TRUNCATE + 0.5)
    half = (k - 1) * 0.5
    x = torch.linspace(-half, half, k, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    out = torch.zeros(taps, dtype=torch.float64)
    start = (taps - k) // 2
    out[start : start + k] = pdf / pdf.sum()
    return out


def _blur(x: torch.Tensor, params: NnunetAugmentParams) -> torch.Tensor:
    """3. separable Gaussian blur of the picked channels, reflect padding, one grouped convolution
    per axis for all of them."""
    on = params.blur_on
    if not bool(on.any()):
        return x
    b, c, h, w = x.shape
    flat = on.flatten()
    idx = _idx(flat, x.device)
    sel = x.reshape(b * c, h, w).index_select(0, idx)[None]  # (1, N, H, W)
    sigmas = params.blur_sigma.reshape(b * c, 2)[flat]
    n, t = len(idx), BLUR_MAX_TAPS
    kernels = torch.stack([torch.stack([gaussian_kernel(float(s)) for s in row]) for row in sigmas])
    kernels = kernels.to(device=x.device, dtype=x.dtype)  # (N, 2, taps)
    sel = F.conv2d(F.pad(sel, (0, 0, t // 2, t // 2), mode="reflect"), kernels[:, 0].reshape(n, 1, t, 1), groups=n)
    sel = F.conv2d(F.pad(sel, (t // 2, t // 2, 0, 0), mode="reflect"), kernels[:, 1].reshape(n, 1, 1, t), groups=n)
    return x.reshape(b * c, h, w).index_copy(0, idx, sel[0]).reshape(b, c, h, w)


def _per_image(x: torch.Tensor, on: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` applied to the images picked by ``on`` (B,) — ``fn(sub, rows)`` with ``rows`` the
    picked positions (CPU bool mask) — the others unchanged."""
    if not bool(on.any()):
        return x
    idx = _idx(on, x.device)
    return x.index_copy(0, idx, fn(x.index_select(0, idx), on))


def _brightness(x: torch.Tensor, params: NnunetAugmentParams) -> torch.Tensor:
    """4. multiplicative brightness, one factor per channel."""

    def fn(sub: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return sub * params.brightness[rows].to(device=x.device, dtype=x.dtype)[:, :, None, None]

    return _per_image(x, params.brightness_on, fn)


def _contrast(x: torch.Tensor, params: NnunetAugmentParams) -> torch.Tensor:
    """5. contrast about each channel's mean, clipped to the channel's range before."""

    def fn(sub: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        f = params.contrast[rows].to(device=x.device, dtype=x.dtype)[:, :, None, None]
        mean = sub.mean((2, 3), keepdim=True)
        lo, hi = sub.amin((2, 3), keepdim=True), sub.amax((2, 3), keepdim=True)
        return torch.minimum(torch.maximum((sub - mean) * f + mean, lo), hi)

    return _per_image(x, params.contrast_on, fn)


def _lowres(x: torch.Tensor, params: NnunetAugmentParams) -> torch.Tensor:
    """6. simulated low resolution of the picked channels, one at a time (each has its own size)."""
    on = params.lowres_on
    if not bool(on.any()):
        return x
    out = x.clone()
    h, w = x.shape[2:]
    for bi, ci in torch.nonzero(on, as_tuple=False).tolist():
        s = float(params.lowres_scale[bi, ci])
        small = F.interpolate(x[bi : bi + 1, ci : ci + 1], [round(h * s), round(w * s)], mode="nearest-exact")
        out[bi, ci] = F.interpolate(small, [h, w], mode="bilinear", align_corners=False)[0, 0]
    return out


def _gamma(x: torch.Tensor, on: torch.Tensor, gammas: torch.Tensor, invert: bool) -> torch.Tensor:
    """7./8. gamma on each channel's [min, max] range, its mean and (unbiased) std restored;
    ``invert``: on −x, then negated back."""

    def fn(sub: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        g = gammas[rows].to(device=x.device, dtype=x.dtype)[:, :, None, None]
        sub = -sub if invert else sub
        mean, std = sub.mean((2, 3), keepdim=True), sub.std((2, 3), keepdim=True)
        lo = sub.amin((2, 3), keepdim=True)
        rng = sub.amax((2, 3), keepdim=True) - lo
        out = torch.pow((sub - lo) / rng.clamp(min=1e-7), g) * rng + lo
        mean_now, std_now = out.mean((2, 3), keepdim=True), out.std((2, 3), keepdim=True)
        out = (out - mean_now) * (std / std_now.clamp(min=1e-7)) + mean
        return -out if invert else out

    return _per_image(x, on, fn)


def _mirror(t: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """9. flips along H (column 0 of ``mirror``) and W (column 1); ``t`` is (B, …, H, W)."""
    view = (-1,) + (1,) * (t.dim() - 1)
    for axis, dim in ((0, -2), (1, -1)):
        if bool(mirror[:, axis].any()):
            flip = mirror[:, axis].to(t.device).view(view)
            t = torch.where(flip, t.flip(dim), t)
    return t


@dataclass(frozen=True)
class IntensitySpace:
    """The z-score nnU-Net's intensity transforms act in: ``z = (clip(x, lo, hi) − mean) / std``
    (no clip where ``lo``/``hi`` are None); ``source``: ``input_norm`` (the model's ct_zscore record)
    or ``training foreground`` (computed from the training images and masks)."""

    mean: float
    std: float
    lo: float | None = None
    hi: float | None = None
    source: str = "input_norm"

    def to_z(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo is not None and self.hi is not None:
            x = x.clamp(self.lo, self.hi)
        return (x - self.mean) / self.std

    def from_z(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean


def intensity_space(record: dict | None, images: torch.Tensor, masks: torch.Tensor) -> IntensitySpace:
    """The :class:`IntensitySpace` of a training run: the model's ``input_norm`` ``record``
    (ct_zscore data: mean, std and the 0.5/99.5 percentiles of the training foreground) when there
    is one, else the foreground mean and population std (``np.std``, as nnU-Net's fingerprint) of
    ``images`` ``(N, C, H, W)`` where ``masks`` ``(N, H, W)`` > 0, in float64 — the same statistics
    from the same pixels. ``ValueError`` when there is no foreground (no z-score exists)."""
    if record:
        lo, hi = float(record["percentile_00_5"]), float(record["percentile_99_5"])
        return IntensitySpace(float(record["mean"]), max(float(record["std"]), 1e-8), lo, hi, "input_norm")
    fg = masks > 0
    v = images.movedim(1, -1)[fg].to(torch.float64)  # (n_foreground, C): the channels pooled
    if v.numel() == 0:
        raise ValueError("nnU-Net augmentation: the training slices hold no foreground to z-score the intensities")
    return IntensitySpace(float(v.mean()), max(float(v.std(correction=0)), 1e-8), None, None, "training foreground")


def apply(
    images: torch.Tensor,
    masks: torch.Tensor,
    params: NnunetAugmentParams,
    num_classes: int | None = None,
    space: IntensitySpace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``params`` applied to ``images`` float ``(B, C, H, W)`` and ``masks`` integer ``(B, H, W)`` on
    their device, in nnU-Net's order; augmented copies. ``num_classes`` (labels 0..K−1) spares the
    one look at ``masks.max()`` (a host sync on CUDA) when some image is resampled. ``space``: the
    z-score the intensity transforms (2–8) act in, as nnU-Net's act on z-scored data (module
    docstring); None: on the values as given."""
    x, y = _spatial(images, masks, params, num_classes)
    x = space.to_z(x) if space is not None else x
    x = _noise(x, params)
    x = _blur(x, params)
    x = _brightness(x, params)
    x = _contrast(x, params)
    x = _lowres(x, params)
    x = _gamma(x, params.gamma_inv_on, params.gamma_inv, invert=True)
    x = _gamma(x, params.gamma_on, params.gamma, invert=False)
    x = space.from_z(x) if space is not None else x
    x, y = _mirror(x, params.mirror), _mirror(y, params.mirror)
    return x.contiguous(), y.contiguous()


def augment(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    num_classes: int | None = None,
    space: IntensitySpace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` float ``(B, C, H, W)``, ``masks`` integer ``(B, H, W)`` (any device) → augmented
    copies on the same device; the parameters come from ``generator`` (CPU), as in
    :func:`lungseg.training.augment.augment`; the intensity transforms act in ``space``
    (:func:`intensity_space`; the training loop always gives one)."""
    return apply(images, masks, draw(images.shape, generator), num_classes, space)
